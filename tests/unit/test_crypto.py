"""Encryption at rest: the AES-256-GCM seal, the EncryptedStore wrapper, rotation and rekey."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from engine.cli import app
from engine.config.models import EncryptionConfig
from engine.obs.metrics import REGISTRY
from engine.store import SQLiteStore
from engine.store.crypto import (
    EncryptionError,
    KeyNotConfiguredError,
    Keyring,
    SealBrokenError,
    decode_key,
    generate_key,
    is_sealed,
    key_id_of,
    read_header,
)
from engine.store.encrypted import EncryptedStore, keyring_from_config, message_context
from engine.types import ConfigError, Inbound, MessageQuery, Status

PATIENT = "DOE^JANE"  # fake PHI: must never appear at rest, in an error or in a log
K1 = bytes(range(32))
K2 = bytes(range(100, 132))
CONTEXT = message_context("adt", "EPIC|HOSP", "C1")


def hl7(control_id: str, patient: str = PATIENT) -> bytes:
    return (f"MSH|^~\\&|EPIC|HOSP|ENG|FAC|20240101120000||ADT^A01|{control_id}|P|2.5.1\r"
            f"PID|1||123^^^HOSP^MR||{patient}\r").encode("latin-1") + b"\xe9\r"


def inbound(control_id: str, raw: bytes | None = None) -> Inbound:
    payload = hl7(control_id) if raw is None else raw
    return Inbound(channel="adt", raw=payload, received_at=time.time(), sender="EPIC|HOSP",
                   control_id=control_id, content_hash=hashlib.sha256(payload).hexdigest(),
                   message_type="ADT^A01", charset="latin-1", ack=b"MSA|AA|" + control_id.encode())


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def stored_raw(db: Path, table: str = "messages") -> list[bytes]:
    conn = sqlite3.connect(db)
    try:
        return [bytes(r[0]) for r in conn.execute(f"SELECT raw FROM {table} ORDER BY id")]
    finally:
        conn.close()


def decrypt_errors() -> float:
    return REGISTRY.get_sample_value("hl7engine_store_errors_total", {"operation": "decrypt"}) or 0.0


class TestKeyring:
    def test_round_trip_returns_the_exact_bytes(self) -> None:
        """Opening a sealed blob with the same context gives back the plaintext byte for byte."""
        keyring = Keyring({"k1": K1}, "k1")
        plaintext = hl7("C1") + b"\x00\xff"
        assert plaintext == keyring.open(keyring.seal(plaintext, CONTEXT), CONTEXT)

    def test_each_seal_uses_a_fresh_nonce(self) -> None:
        """Sealing the same bytes twice gives different blobs (random 96-bit nonce)."""
        keyring = Keyring({"k1": K1}, "k1")
        first, second = keyring.seal(b"same", CONTEXT), keyring.seal(b"same", CONTEXT)
        assert read_header(first).nonce != read_header(second).nonce
        assert first != second

    def test_blob_names_its_key_and_hides_the_content(self) -> None:
        """The header carries the key id; the PHI is not readable in the blob."""
        blob = Keyring({"k1": K1}, "k1").seal(hl7("C1"), CONTEXT)
        assert (True, "k1") == (is_sealed(blob), key_id_of(blob))
        assert PATIENT.encode() not in blob

    @pytest.mark.parametrize("where", ["key_id", "nonce", "digest", "ciphertext", "tag"])
    def test_any_altered_byte_is_detected(self, where: str) -> None:
        """Flipping one bit anywhere in the header or ciphertext fails authentication."""
        keyring = Keyring({"k1": K1, "k0": K2}, "k1")
        blob = keyring.seal(hl7("C1"), CONTEXT)
        header = read_header(blob)
        index = {"key_id": 6, "nonce": header.length - 40, "digest": header.length - 1,
                 "ciphertext": header.length + 3, "tag": len(blob) - 1}[where]
        with pytest.raises((SealBrokenError, KeyNotConfiguredError)):
            keyring.open(flip(blob, index), CONTEXT)

    def test_truncated_blob_is_refused(self) -> None:
        """A blob cut short is reported as malformed, not crashed on."""
        blob = Keyring({"k1": K1}, "k1").seal(b"x" * 40, CONTEXT)
        with pytest.raises(SealBrokenError):
            Keyring({"k1": K1}, "k1").open(blob[:30], CONTEXT)

    def test_ciphertext_moved_to_another_row_is_refused(self) -> None:
        """The context is associated data: a blob from another channel or sender does not open."""
        keyring = Keyring({"k1": K1}, "k1")
        blob = keyring.seal(hl7("C1"), CONTEXT)
        for other in (message_context("lab", "EPIC|HOSP", "C1"), message_context("adt", "EVIL|HOSP", "C1"),
                      message_context("adt", "EPIC|HOSP", "C2")):
            with pytest.raises(SealBrokenError):
                keyring.open(blob, other)

    def test_unknown_key_id_names_the_key(self) -> None:
        """A blob sealed under a key that is not configured raises an error naming that key id."""
        blob = Keyring({"k1": K1}, "k1").seal(hl7("C1"), CONTEXT)
        with pytest.raises(KeyNotConfiguredError, match="'k1'") as caught:
            Keyring({"k2": K2}, "k2").open(blob, CONTEXT)
        assert "k1" == caught.value.key_id

    def test_same_id_other_key_material_is_a_broken_seal(self) -> None:
        """A key id bound to other bytes cannot open the row (wrong key), and says which id."""
        blob = Keyring({"k1": K1}, "k1").seal(hl7("C1"), CONTEXT)
        with pytest.raises(SealBrokenError, match="'k1'"):
            Keyring({"k1": K2}, "k1").open(blob, CONTEXT)

    def test_rotation_reads_old_writes_new(self) -> None:
        """With k2 active and k1 still configured, k1 rows open and new rows use k2."""
        old = Keyring({"k1": K1}, "k1").seal(b"before", CONTEXT)
        rotated = Keyring({"k1": K1, "k2": K2}, "k2")
        assert b"before" == rotated.open(old, CONTEXT)
        assert "k2" == key_id_of(rotated.seal(b"after", CONTEXT))

    def test_errors_and_repr_never_show_content_or_key(self) -> None:
        """Neither the keyring's repr nor a decryption error carries key bytes or plaintext."""
        keyring = Keyring({"k1": K1}, "k1")
        blob = keyring.seal(hl7("C1"), CONTEXT)
        with pytest.raises(SealBrokenError) as caught:
            keyring.open(blob, message_context("x", "y", "z"))
        for text in (repr(keyring), str(caught.value)):
            assert PATIENT not in text
            assert base64.b64encode(K1).decode() not in text

    def test_plaintext_rows_pass_through_open_or_plain(self) -> None:
        """Rows written before encryption was enabled are returned unchanged."""
        assert hl7("C1") == Keyring({"k1": K1}, "k1").open_or_plain(hl7("C1"), CONTEXT)

    def test_active_key_must_be_configured(self) -> None:
        """An active id missing from the keys is a configuration error."""
        with pytest.raises(ConfigError, match="active"):
            Keyring({"k1": K1}, "k2")

    @given(st.binary(max_size=2048), st.lists(st.text(max_size=8), max_size=4))
    def test_round_trip_any_bytes_any_context(self, plaintext: bytes, context: list[str]) -> None:
        """Every byte string round-trips under every context."""
        keyring = Keyring({"k1": K1}, "k1")
        assert plaintext == keyring.open(keyring.seal(plaintext, context), context)


class TestKeyMaterial:
    def test_generated_key_decodes_to_32_bytes(self) -> None:
        """`keys generate` output is what `encryption.keys` accepts."""
        assert 32 == len(decode_key(generate_key(), "k1"))

    @pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"short").decode()])
    def test_bad_key_names_the_id_not_the_value(self, text: str) -> None:
        """A malformed key is a ConfigError naming the key id and never echoing the value."""
        with pytest.raises(ConfigError) as caught:
            decode_key(text, "k7")
        assert "encryption.keys.k7" in str(caught.value)
        assert text not in str(caught.value)

    def test_keyring_from_config_reads_env_and_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Keys come by reference: one from the environment, one from a file."""
        monkeypatch.setenv("TEST_KEY_K2", base64.b64encode(K2).decode())
        (tmp_path / "k1").write_text(base64.b64encode(K1).decode() + "\n")
        config = EncryptionConfig.model_validate(
            {"keys": {"k2": {"env": "TEST_KEY_K2"}, "k1": {"file": str(tmp_path / "k1")}}, "active": "k2"})
        keyring = keyring_from_config(config)
        assert ("k2", frozenset({"k1", "k2"})) == (keyring.active, keyring.key_ids)

    def test_missing_env_key_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unset key variable fails start-up with the variable's name."""
        monkeypatch.delenv("TEST_KEY_UNSET", raising=False)
        config = EncryptionConfig.model_validate({"keys": {"k1": {"env": "TEST_KEY_UNSET"}}, "active": "k1"})
        with pytest.raises(ConfigError, match="TEST_KEY_UNSET"):
            keyring_from_config(config)


class TestEncryptionConfig:
    def test_active_must_name_a_key(self) -> None:
        """`active` must be one of the configured key ids."""
        with pytest.raises(ValidationError, match="active key"):
            EncryptionConfig.model_validate({"keys": {"k1": {"env": "X"}}, "active": "k2"})

    def test_inline_key_is_refused(self) -> None:
        """A key written inline in the config is refused (secrets only by reference)."""
        with pytest.raises(ValidationError, match="inline secret"):
            EncryptionConfig.model_validate({"keys": {"k1": base64.b64encode(K1).decode()}, "active": "k1"})

    def test_key_id_rules(self) -> None:
        """Key ids are short identifiers (they are stored in every row's header)."""
        with pytest.raises(ValidationError, match="key ids"):
            EncryptionConfig.model_validate({"keys": {"bad id!": {"env": "X"}}, "active": "bad id!"})


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class TestEncryptedStore:
    async def test_rows_are_sealed_at_rest_and_read_back_exactly(self, sqlite: SQLiteStore, tmp_path: Path) -> None:
        """On disk the message is ciphertext; through the wrapper it is the exact bytes."""
        store = EncryptedStore(sqlite, Keyring({"k1": K1}, "k1"))
        (result,) = await store.ingest([inbound("C1")])
        (on_disk,) = stored_raw(tmp_path / "store.db")
        assert "k1" == key_id_of(on_disk)
        assert PATIENT.encode() not in on_disk
        message = await store.get(result.message_id)
        assert message is not None
        assert hl7("C1") == message.raw

    async def test_dedup_still_replays_the_stored_ack(self, sqlite: SQLiteStore) -> None:
        """An exact resend is a duplicate although each seal differs (dedup uses the plaintext hash)."""
        store = EncryptedStore(sqlite, Keyring({"k1": K1}, "k1"))
        (first,) = await store.ingest([inbound("C1")])
        (second,) = await store.ingest([inbound("C1")])
        assert ("duplicate", first.message_id, first.ack) == (second.outcome, second.message_id, second.ack)

    async def test_quarantined_frames_are_sealed_too(self, sqlite: SQLiteStore, tmp_path: Path) -> None:
        """Quarantined raw bytes are encrypted at rest and listed decrypted."""
        store = EncryptedStore(sqlite, Keyring({"k1": K1}, "k1"))
        await store.quarantine("adt", b"PID|1||" + PATIENT.encode(), "no_msh", time.time(), "127.0.0.1")
        (on_disk,) = stored_raw(tmp_path / "store.db", "quarantine")
        assert PATIENT.encode() not in on_disk
        (frame,) = await store.quarantined("adt")
        assert (b"PID|1||" + PATIENT.encode(), "no_msh") == (frame.raw, frame.reason)

    async def test_missing_key_dead_letters_on_lease_instead_of_crashing(self, sqlite: SQLiteStore) -> None:
        """Leasing a row sealed under an unconfigured key dead-letters it with a reason naming the key."""
        await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound("C1")])
        await EncryptedStore(sqlite, Keyring({"k2": K2}, "k2")).ingest([inbound("C2")])
        store = EncryptedStore(sqlite, Keyring({"k2": K2}, "k2"))
        before = decrypt_errors()
        leased = await store.lease("adt", 10, time.time())
        assert ["C2"] == [m.control_id for m in leased]
        assert 1 == decrypt_errors() - before
        (dead,) = await store.query(MessageQuery(statuses=frozenset({Status.DEAD})))
        assert "C1" == dead.control_id
        assert dead.last_error is not None and "'k1' is not configured" in dead.last_error
        assert PATIENT not in dead.last_error

    async def test_get_names_the_missing_key_and_query_keeps_listing(self, sqlite: SQLiteStore) -> None:
        """get raises a clear error naming message and key; query returns the row with empty bytes."""
        (result,) = await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound("C1")])
        store = EncryptedStore(sqlite, Keyring({"k2": K2}, "k2"))
        with pytest.raises(EncryptionError, match=rf"message {result.message_id}: .*'k1'"):
            await store.get(result.message_id)
        (listed,) = await store.query(MessageQuery())
        assert ("C1", b"") == (listed.control_id, listed.raw)

    async def test_plaintext_rows_from_before_encryption_stay_readable(self, sqlite: SQLiteStore) -> None:
        """Enabling encryption on an existing store keeps its old plaintext rows readable."""
        (old,) = await sqlite.ingest([inbound("C1")])
        store = EncryptedStore(sqlite, Keyring({"k1": K1}, "k1"))
        message = await store.get(old.message_id)
        assert message is not None
        assert hl7("C1") == message.raw


class TestRekey:
    async def test_rekey_moves_every_row_to_the_active_key(self, sqlite: SQLiteStore, tmp_path: Path) -> None:
        """Plaintext, k1 and k2 rows (messages and quarantine) all end up under k2, content unchanged."""
        await sqlite.ingest([inbound("P1")])
        await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound(f"A{i}") for i in range(5)])
        await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).quarantine("adt", b"junk", "no_msh", 1.0)
        store = EncryptedStore(sqlite, Keyring({"k1": K1, "k2": K2}, "k2"))
        await store.ingest([inbound("B1")])
        report = await store.rekey(page_size=2)
        assert (8, 7, 1, 0) == (report.examined, report.rekeyed, report.current, report.failures)
        assert {"plaintext": 1, "k1": 6, "k2": 1} == report.by_key
        db = tmp_path / "store.db"
        assert {"k2"} == {key_id_of(raw) for raw in stored_raw(db) + stored_raw(db, "quarantine")}
        only_k2 = EncryptedStore(sqlite, Keyring({"k2": K2}, "k2"))
        rows = await only_k2.query(MessageQuery())
        assert [hl7(m.control_id) for m in rows] == [m.raw for m in rows]

    async def test_dry_run_writes_nothing(self, sqlite: SQLiteStore, tmp_path: Path) -> None:
        """--dry-run counts the rows it would re-encrypt and leaves them as they are."""
        await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound("A1")])
        before = stored_raw(tmp_path / "store.db")
        report = await EncryptedStore(sqlite, Keyring({"k1": K1, "k2": K2}, "k2")).rekey(dry_run=True)
        assert 1 == report.rekeyed
        assert before == stored_raw(tmp_path / "store.db")

    async def test_rekey_reports_rows_it_cannot_open(self, sqlite: SQLiteStore) -> None:
        """A row under a key no longer configured is listed by id with the key named, and left alone."""
        (lost,) = await EncryptedStore(sqlite, Keyring({"k0": K1}, "k0")).ingest([inbound("A1")])
        await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound("A2")])
        report = await EncryptedStore(sqlite, Keyring({"k1": K1, "k2": K2}, "k2")).rekey()
        assert (1, 1) == (report.rekeyed, report.failures)
        ((table, row_id, reason),) = report.failed
        assert ("messages", lost.message_id) == (table, row_id)
        assert "'k0'" in reason

    async def test_rekey_detects_a_ciphertext_swapped_between_colliding_rows(
        self, sqlite: SQLiteStore, tmp_path: Path
    ) -> None:
        """Two rows with the same channel, sender and control id: a swapped ciphertext fails the hash check."""
        store = EncryptedStore(sqlite, Keyring({"k1": K1}, "k1"))
        await store.ingest([inbound("SAME", hl7("SAME", "ONE^A"))])
        await store.ingest([inbound("SAME", hl7("SAME", "TWO^B"))])
        conn = sqlite3.connect(tmp_path / "store.db")
        first, second = [bytes(r[0]) for r in conn.execute("SELECT raw FROM messages ORDER BY id")]
        conn.execute("UPDATE messages SET raw = ? WHERE id = 2", (first,))
        conn.commit()
        conn.close()
        report = await EncryptedStore(sqlite, Keyring({"k1": K1, "k2": K2}, "k2")).rekey()
        assert 1 == report.failures
        assert "content hash" in report.failed[0][2]
        assert second != first


class TestKeysCommand:
    def test_rekey_command_reencrypts_and_generate_prints_a_key(self, tmp_path: Path) -> None:
        """`hl7engine keys rekey -c` moves rows to the active key; `keys generate` prints a usable key."""
        runner = CliRunner()
        generated = runner.invoke(app, ["keys", "generate"])
        assert 0 == generated.exit_code
        assert 32 == len(base64.b64decode(generated.output.strip()))
        db = tmp_path / "store.db"
        old = base64.b64encode(K1).decode()
        new = generated.output.strip()
        (tmp_path / "k1.key").write_text(old)
        config = tmp_path / "engine.yaml"
        config.write_text(f"""store:
  path: {db}
encryption:
  keys:
    k1: {{file: {tmp_path / 'k1.key'}}}
    k2: {{env: TEST_REKEY_K2}}
  active: k2
channels:
  - name: adt
    listen: 127.0.0.1:0
    sinks:
      - type: file
        path: {tmp_path / 'out.ndjson'}
""")
        async def seed() -> None:
            sqlite = SQLiteStore(db)
            await sqlite.open()
            try:
                await EncryptedStore(sqlite, Keyring({"k1": K1}, "k1")).ingest([inbound("A1"), inbound("A2")])
            finally:
                await sqlite.close()

        asyncio.run(seed())
        result = runner.invoke(app, ["keys", "rekey", "-c", str(config)], env={"TEST_REKEY_K2": new})
        assert 0 == result.exit_code, result.output
        assert "re-encrypted 2" in result.output
        assert {"k2"} == {key_id_of(raw) for raw in stored_raw(db)}
        assert old not in result.output and new not in result.output


class TestEngineEncryption:
    async def test_engine_seals_at_rest_and_delivers_plaintext(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With `encryption:` configured the engine stores ciphertext and still delivers the Bundle."""
        from engine.app import Engine
        from engine.config.loader import load_config
        from tests.support.messages import adt_a01
        from tests.support.mllp import exchange, msa

        monkeypatch.setenv("TEST_ENGINE_KEY", base64.b64encode(K1).decode())
        config = tmp_path / "engine.yaml"
        config.write_text(f"""store:
  path: {tmp_path / 'store.db'}
admin:
  listen: 127.0.0.1:0
workers: 0
encryption:
  keys:
    k1: {{env: TEST_ENGINE_KEY}}
  active: k1
channels:
  - name: adt
    listen: 127.0.0.1:0
    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: file
        path: {tmp_path / 'out.ndjson'}
""", encoding="utf-8")
        engine = Engine(load_config(config))
        await engine.start()
        try:
            port = engine.channels["adt"].server.port
            ack = await exchange("127.0.0.1", port, adt_a01("ENC1", family="ZZSEALED").encode())
            assert ["AA", "ENC1"] == msa(ack)[:2]
            out = tmp_path / "out.ndjson"
            deadline = time.monotonic() + 15
            while not (out.exists() and out.read_bytes().endswith(b"\n")):
                assert time.monotonic() < deadline, "the Bundle was not delivered"
                await asyncio.sleep(0.02)
            assert b"ZZSEALED" in out.read_bytes()
        finally:
            await engine.stop(5)
        (on_disk,) = stored_raw(tmp_path / "store.db")
        assert ("k1", False) == (key_id_of(on_disk), b"ZZSEALED" in on_disk)
