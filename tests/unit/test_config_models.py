"""The config models' own rules and helpers (engine/config/models.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config.models import (
    AcceptConfig,
    AdminConfig,
    ChannelConfig,
    EngineConfig,
    HostPort,
    LimitsConfig,
    LoggingConfig,
    RetryPolicy,
    SecretRef,
    StoreConfig,
    TlsConfig,
)
from engine.config.yamlpos import interpolate
from engine.types import ConfigError
from tests.unit.test_config_fixtures import StubFileSinkConfig


def file_sink(path: str = "out.ndjson", name: str | None = None) -> StubFileSinkConfig:
    return StubFileSinkConfig(type="file", path=Path(path), name=name)


class TestHostPort:
    def test_parses_ipv4_ipv6_and_host_names(self) -> None:
        """The three address forms parse and print back the same."""
        for text, host, port in (
            ("127.0.0.1:2575", "127.0.0.1", 2575),
            ("[::1]:0", "::1", 0),
            ("mllp.example.org:65535", "mllp.example.org", 65535),
        ):
            address = HostPort.parse(text)
            assert (host, port) == (address.host, address.port)
            assert text == str(address)

    @pytest.mark.parametrize(
        "text", ["127.0.0.1", ":2575", "127.0.0.1:65536", "127.0.0.1:-1", "::1:2575", "[zz]:1", "a_b:1"]
    )
    def test_rejects_malformed_addresses(self, text: str) -> None:
        """Missing host or port, out-of-range ports, unbracketed IPv6 and bad names fail."""
        with pytest.raises(ValueError):
            HostPort.parse(text)

    def test_is_the_normalised_string(self) -> None:
        """Code may treat an address as text: it equals its `host:port` form and survives copies."""
        address = HostPort.parse(" [::1]:2575 ")
        assert address == "[::1]:2575"
        assert address.rpartition(":")[2] == "2575"
        assert pickle.loads(pickle.dumps(address)).port == 2575

    def test_overlap_rules(self) -> None:
        """Same port clashes on the same host or with a wildcard; port 0 never clashes."""
        a = HostPort.parse("127.0.0.1:2575")
        assert a.overlaps(HostPort.parse("0.0.0.0:2575"))
        assert a.overlaps(HostPort.parse("127.0.0.1:2575"))
        assert not a.overlaps(HostPort.parse("10.0.0.1:2575"))
        assert not a.overlaps(HostPort.parse("127.0.0.1:2576"))
        assert not HostPort.parse("127.0.0.1:0").overlaps(HostPort.parse("127.0.0.1:0"))


class TestAcceptConfig:
    def test_rejection_codes_follow_table_0357(self) -> None:
        """200 unknown type, 201 unknown event, 202 processing id, 203 version, None accepted."""
        accept = AcceptConfig(
            message_types=("ADT^A01", "ORU"), processing_ids=("P",), versions=("2.5", "2.5.*")
        )
        assert accept.rejection("ADT", "A01", "P", "2.5.1") is None
        assert accept.rejection("ORU", "R01", "P^T", "2.5") is None
        assert accept.rejection("SIU", "S12", "P", "2.5") == 200
        assert accept.rejection("ADT", "A08", "P", "2.5") == 201
        assert accept.rejection("ADT", "A01", "T", "2.5") == 202
        assert accept.rejection("ADT", "A01", "P", "2.3") == 203

    def test_defaults_accept_everything(self) -> None:
        """Without an accept section every message type, processing id and version passes."""
        assert AcceptConfig().rejection("ZZZ", "Z01", "D", "2.9") is None

    def test_patterns_are_normalised_and_checked(self) -> None:
        """Patterns are upper-cased; malformed ones, empty lists and numeric versions fail."""
        assert AcceptConfig(message_types=("adt^*",)).message_types == ("ADT^*",)
        bad_configs: list[dict[str, object]] = [
            {"message_types": ["ADT^A01^ADT_A01"]},
            {"message_types": []},
            {"versions": [2.5]},
        ]
        for bad in bad_configs:
            with pytest.raises(ValidationError):
                AcceptConfig.model_validate(bad)


class TestRetryPolicy:
    def test_delays_grow_then_cap(self) -> None:
        """Without jitter: initial, doubled, ..., never above max_s."""
        policy = RetryPolicy(initial_s=1, max_s=10, multiplier=2, jitter=0)
        assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]

    def test_jitter_spreads_within_bounds_and_huge_attempts_do_not_overflow(self) -> None:
        """unit_random 0 and 1 give -/+ jitter; attempt 10**6 stays at max_s."""
        policy = RetryPolicy(initial_s=1, max_s=300, multiplier=10, jitter=0.2)
        assert policy.delay_s(10**6, 0.0) == pytest.approx(240)
        assert policy.delay_s(10**6, 1.0) == pytest.approx(360)

    def test_max_below_initial_is_refused(self) -> None:
        """A policy whose cap is below its first delay is a mistake."""
        with pytest.raises(ValidationError, match="max_s cannot be below initial_s"):
            RetryPolicy(initial_s=10, max_s=1)


class TestSecretRef:
    def test_literal_strings_and_numbers_are_refused(self) -> None:
        """Only references are secrets; the message never holds the value."""
        for literal in ("hunter2", 1234):
            with pytest.raises(ValidationError) as caught:
                SecretRef.model_validate(literal)
            assert "inline secret refused" in str(caught.value)

    def test_interpolated_reference_becomes_an_env_ref(self) -> None:
        """A scalar that was exactly ${NAME} is kept as the reference, not the value."""
        value = interpolate("${API_TOKEN}", {"API_TOKEN": "s3cr3t"})
        assert SecretRef.model_validate(value) == SecretRef(env="API_TOKEN")
        assert "s3cr3t" not in repr(SecretRef.model_validate(value))

    def test_partial_references_and_defaults_are_refused(self) -> None:
        """`Bearer ${T}` and `${T:-x}` would put literal text into a secret."""
        for text in ("Bearer ${T}", "${T:-fallback}"):
            with pytest.raises(ValidationError):
                SecretRef.model_validate(interpolate(text, {"T": "v"}))

    def test_reveal_reads_env_and_file_at_call_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The value is fetched when asked, so rotation works; absence is a ConfigError."""
        monkeypatch.setenv("HL7ENGINE_TEST_SECRET", "one")
        ref = SecretRef(env="HL7ENGINE_TEST_SECRET")
        assert ref.reveal() == "one"
        monkeypatch.setenv("HL7ENGINE_TEST_SECRET", "two")
        assert ref.reveal() == "two"
        monkeypatch.delenv("HL7ENGINE_TEST_SECRET")
        with pytest.raises(ConfigError, match="HL7ENGINE_TEST_SECRET is not set"):
            ref.reveal()
        (tmp_path / "s").write_text("from-file\n")
        assert SecretRef(file=tmp_path / "s").reveal() == "from-file"

    def test_exactly_one_source(self) -> None:
        """Neither or both of env and file is an error."""
        for data in ({}, {"env": "A", "file": "b"}):
            with pytest.raises(ValidationError, match="exactly one"):
                SecretRef.model_validate(data)


class TestStoreConfig:
    def test_sqlite_is_the_default(self) -> None:
        """No path and no url means data/hl7engine.db."""
        store = StoreConfig()
        assert (store.backend, store.path) == ("sqlite", Path("data/hl7engine.db"))

    def test_url_replaces_the_default_path(self) -> None:
        """Giving a PostgreSQL url drops the SQLite default."""
        store = StoreConfig.model_validate(
            {"url": "postgresql://hl7@db/hl7", "password": {"env": "PGPASSWORD"}}
        )
        assert (store.backend, store.path) == ("postgresql", None)

    def test_path_and_url_together_or_bad_url_fail(self) -> None:
        """Exactly one backend; only postgresql:// urls; no inline password in the url."""
        for data in (
            {"path": "x.db", "url": "postgresql://h/db"},
            {"url": "mysql://h/db"},
            {"url": "postgresql://u:pw@h/db"},
        ):
            with pytest.raises(ValidationError):
                StoreConfig.model_validate(data)

    def test_password_from_env_in_url_is_allowed(self) -> None:
        """A url whose password part is a ${VAR} reference is not an inline secret."""
        url = interpolate("postgresql://u:${PGPW}@h/db", {"PGPW": "pw"})
        assert StoreConfig.model_validate({"url": url}).url == "postgresql://u:pw@h/db"


class TestChannelConfig:
    def test_direct_construction_names_sinks(self) -> None:
        """Unnamed sinks get their type, or type-n when the type repeats."""
        channel = ChannelConfig.model_validate(
            {"name": "adt", "listen": "127.0.0.1:0", "sinks": [file_sink("a"), file_sink("b")]}
        )
        assert channel.sink_names == ["file-1", "file-2"]

    def test_direct_construction_rejects_duplicate_sink_names(self) -> None:
        """Two sinks named alike would share delivery progress in the store."""
        with pytest.raises(ValidationError, match="used twice"):
            ChannelConfig.model_validate(
                {
                    "name": "adt",
                    "listen": "127.0.0.1:0",
                    "sinks": [file_sink("a", "x"), file_sink("b", "x")],
                }
            )

    def test_allow_list_admits_only_its_networks(self) -> None:
        """CIDRs gate peers; IPv4-mapped IPv6 peers count as IPv4; no list admits all."""
        channel = ChannelConfig.model_validate(
            {
                "name": "adt",
                "listen": "0.0.0.0:0",
                "allow": ["10.0.0.0/8", "192.168.1.20"],
                "sinks": [file_sink()],
            }
        )
        assert channel.allows("10.1.2.3")
        assert channel.allows("::ffff:192.168.1.20")
        assert not channel.allows("192.168.1.21")
        assert not channel.allows("not-an-ip")
        open_channel = ChannelConfig.model_validate(
            {"name": "a", "listen": "127.0.0.1:0", "sinks": [file_sink()]}
        )
        assert open_channel.allows("203.0.113.9")

    def test_allow_rejects_host_bits_and_empty_lists(self) -> None:
        """10.0.0.1/8 is probably a typo; [] would admit nobody."""
        for allow in (["10.0.0.1/8"], []):
            with pytest.raises(ValidationError):
                ChannelConfig.model_validate(
                    {"name": "a", "listen": "127.0.0.1:0", "allow": allow, "sinks": [file_sink()]}
                )

    def test_limits_tls_and_charset_rules(self, tmp_path: Path) -> None:
        """Per-peer limit within the total; mTLS needs a CA; the fallback charset must exist."""
        with pytest.raises(ValidationError):
            LimitsConfig(max_connections=4, max_connections_per_peer=8)
        with pytest.raises(ValidationError, match="needs 'ca'"):
            TlsConfig.model_validate({"cert": "c.pem", "key": "k.pem", "require_client_cert": True})
        with pytest.raises(ValidationError, match="unknown charset"):
            ChannelConfig.model_validate(
                {
                    "name": "a",
                    "listen": "127.0.0.1:0",
                    "charset_fallback": "klingon",
                    "sinks": [file_sink()],
                }
            )

    def test_names_must_be_identifier_safe(self) -> None:
        """Channel names become metric labels and store keys."""
        for name in ("ADT", "1adt", "a b", "a" * 65):
            with pytest.raises(ValidationError):
                ChannelConfig.model_validate(
                    {"name": name, "listen": "127.0.0.1:0", "sinks": [file_sink()]}
                )


class TestAdminConfig:
    def test_token_roles_reveal_tokens_for_the_admin_server(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """token_roles() gives the admin API its {token: "role,role"} map, read at call time."""
        monkeypatch.setenv("HL7ENGINE_TEST_ADMIN", "tok")
        admin = AdminConfig.model_validate(
            {"tokens": [{"token": {"env": "HL7ENGINE_TEST_ADMIN"}, "roles": "operator,phi-reader"}]}
        )
        assert admin.token_roles() == {"tok": "operator,phi-reader"}
        assert AdminConfig().token_roles() == {}

    def test_a_token_needs_a_role(self) -> None:
        """A token granting nothing is a mistake."""
        with pytest.raises(ValidationError):
            AdminConfig.model_validate({"tokens": [{"token": {"env": "X"}, "roles": []}]})


class TestLoggingConfig:
    def test_content_logging_is_off_by_default_and_levels_are_case_insensitive(self) -> None:
        """PHI never reaches logs unless asked for; INFO and info are the same level."""
        config = LoggingConfig.model_validate({"level": "INFO"})
        assert (config.level, config.format, config.log_content) == ("info", "json", False)


class TestEngineConfig:
    def test_direct_construction_checks_topology(self) -> None:
        """Built in Python, duplicate names and clashing listeners still fail."""
        channel = {"name": "adt", "listen": "127.0.0.1:2575", "sinks": [file_sink()]}
        with pytest.raises(ValidationError, match="duplicate channel name 'adt'"):
            EngineConfig.model_validate({"channels": [channel, {**channel, "listen": "127.0.0.1:2576"}]})
        with pytest.raises(ValidationError, match=r"also used by admin\.listen"):
            EngineConfig.model_validate({"channels": [{**channel, "listen": "0.0.0.0:8081"}]})

    def test_channel_lookup_suggests_close_names(self) -> None:
        """`convert --channel adtt` says which channel was probably meant."""
        config = EngineConfig.model_validate(
            {"channels": [{"name": "adt", "listen": "127.0.0.1:0", "sinks": [file_sink()]}]}
        )
        assert config.channel("adt").name == "adt"
        with pytest.raises(KeyError, match="did you mean 'adt'"):
            config.channel("adtt")

    def test_empty_sections_mean_defaults(self) -> None:
        """`store:` with nothing under it is the default store."""
        config = EngineConfig.model_validate({"store": None, "admin": None, "logging": None})
        assert config.store.path == Path("data/hl7engine.db")
        assert str(config.admin.listen) == "127.0.0.1:8081"
        assert config.shutdown_timeout_s == 30.0
