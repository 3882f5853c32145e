"""The NATS JetStream sink against a real JetStream server, plus its subject templates and
the broker payloads it publishes (engine/sinks/payload.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from engine.app import Engine
from engine.config.loader import load_config
from engine.sinks.nats import NatsSinkConfig, SubjectTemplate, subject_values
from engine.sinks.nats_client import NatsSink
from engine.sinks.payload import HEADER_MESSAGE_ID, broker_messages, headers, payloads
from engine.types import PermanentError, TransientError
from tests.support.brokers import jetstream_url, nats_server, sample_exchange
from tests.support.engine_proc import free_port
from tests.support.messages import adt_a01
from tests.support.mllp import exchange, msa


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with jetstream_url(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture
def names() -> tuple[str, str]:
    """A stream and a subject prefix of this test alone (the server may be shared)."""
    run = uuid.uuid4().hex[:12]
    return f"HL7TEST_{run}", f"hl7test.{run}"


@pytest.fixture
async def js(nats_url: str, names: tuple[str, str]) -> AsyncIterator[JetStreamContext]:
    """A JetStream context for checking what arrived; deletes the test's stream afterwards."""
    client = await nats.connect(nats_url)
    context = client.jetstream()
    yield context
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await context.delete_stream(names[0])
    await client.close()


def make_sink(url: str, names: tuple[str, str], **kwargs: object) -> NatsSink:
    stream, prefix = names
    options: dict[str, object] = {"stream": stream, "create_stream": True, "timeout_s": 5.0}
    options.update(kwargs)
    return NatsSink("nats", "adt", [url], SubjectTemplate(prefix + ".{channel}.{message_type}"),
                    **options)  # type: ignore[arg-type]


class TestSubjectTemplate:
    def test_renders_safe_values(self) -> None:
        """Placeholders are filled, and characters that could add tokens or wildcards are replaced."""
        template = SubjectTemplate("hl7.{channel}.{message_type}")
        assert "hl7.adt.ADT_A01" == template.render({"channel": "adt", "message_type": "ADT_A01"})
        assert "hl7.a_b__.x_y" == template.render({"channel": "a.b*>", "message_type": "x y"})

    def test_wildcard_covers_every_rendering(self) -> None:
        """The stream filter turns each token holding a placeholder into '*'."""
        assert "hl7.*.adt.*" == SubjectTemplate("hl7.{channel}-in.adt.{message_code}").wildcard()

    @pytest.mark.parametrize("template", ["hl7.{patient}", "hl7.{channel!r}", "hl7..x", "hl7.*", "hl7 x",
                                          "hl7.{channel.__class__}"])
    def test_refuses_unsafe_templates(self, template: str) -> None:
        """Unknown placeholders, conversions, empty tokens, wildcards and blanks are config errors."""
        with pytest.raises(ValueError):
            SubjectTemplate(template)

    def test_values_come_from_the_header(self) -> None:
        """message_code / trigger_event / message_type are read from MSH-9, never from PID."""
        values = subject_values(sample_exchange(1), "nats", "Bundle")
        assert ("ADT", "A01", "ADT_A01") == (values["message_code"], values["trigger_event"],
                                             values["message_type"])


class TestNatsSinkConfig:
    def test_config_checks_template_and_urls(self) -> None:
        """A bad subject, a URL holding a password, or create_stream without a stream are refused."""
        base = {"type": "nats", "subject": "hl7.{channel}"}
        NatsSinkConfig.model_validate(base)
        for bad in ({"subject": "hl7.{mrn}"}, {"servers": ["nats://u:p@host:4222"]}, {"create_stream": True},
                    {"servers": ["http://host:4222"]}):
            with pytest.raises(ValidationError):
                NatsSinkConfig.model_validate({**base, **bad})


class TestBrokerPayloads:
    def test_bundle_mode_is_one_message_with_a_traceable_id(self) -> None:
        """bundle: one JSON Bundle whose id names channel and message, suffix ''."""
        item = sample_exchange(7)
        ((suffix, body),) = payloads(item, "bundle")
        assert item.output_json() == body  # the runner's serialisation, not a second one
        document = json.loads(body)
        assert ("", "Bundle", "adt-7") == (suffix, document["resourceType"], document["id"])

    def test_resources_mode_is_one_message_per_resource_without_requests(self) -> None:
        """resources: each entry's resource alone, suffixed with its entry index."""
        items = payloads(sample_exchange(7), "resources")
        assert [":0", ":1", ":2"] == [suffix for suffix, _ in items]
        documents = [json.loads(body) for _, body in items]
        assert ["Patient", "Encounter", "Coverage"] == [d["resourceType"] for d in documents]
        assert all("request" not in d for d in documents)

    def test_headers_carry_no_phi(self) -> None:
        """Headers hold ids and types; the MRN and the family name appear nowhere in them."""
        item = sample_exchange(7, mrn="MRN777", family="CANARYNAME")
        messages = broker_messages(item, "resources")
        for message in messages:
            text = json.dumps(headers(item, message, count=len(messages)))
            assert "MRN777" not in text and "CANARYNAME" not in text
        assert "adt:7:0" == headers(item, messages[0], count=3)[HEADER_MESSAGE_ID]

    def test_no_output_is_permanent(self) -> None:
        """Without a mapping stage there is nothing to publish: permanent, not retried."""
        item = sample_exchange(1)
        item.output = None
        with pytest.raises(PermanentError):
            payloads(item, "bundle")


class TestNatsSink:
    async def test_messages_arrive_with_their_ids(self, nats_url: str, names: tuple[str, str],
                                                  js: JetStreamContext) -> None:
        """Each delivered Bundle is stored once in the stream, on its subject, with Nats-Msg-Id set."""
        sink = make_sink(nats_url, names)
        await sink.start()
        try:
            assert [None, None] == await sink.deliver_many([sample_exchange(1), sample_exchange(2)])
        finally:
            await sink.close()
        info = await js.stream_info(names[0])
        assert 2 == info.state.messages
        first = await js.get_msg(names[0], 1)
        assert f"{names[1]}.adt.ADT_A01" == first.subject
        assert first.headers is not None and "adt:1" == first.headers["Nats-Msg-Id"]
        assert "Bundle" == json.loads(first.data)["resourceType"]

    async def test_redelivery_is_absorbed_by_the_stream(self, nats_url: str, names: tuple[str, str],
                                                        js: JetStreamContext) -> None:
        """Delivering the same exchange twice leaves one message in the stream."""
        sink = make_sink(nats_url, names)
        try:
            assert [None] == await sink.deliver_many([sample_exchange(5)])
            assert [None] == await sink.deliver_many([sample_exchange(5)])
        finally:
            await sink.close()
        assert 1 == (await js.stream_info(names[0])).state.messages

    async def test_resources_mode_publishes_each_resource_once(self, nats_url: str, names: tuple[str, str],
                                                               js: JetStreamContext) -> None:
        """resources: three entries give three messages; a redelivery adds none."""
        sink = make_sink(nats_url, names, payload="resources")
        try:
            for _ in range(2):
                assert [None] == await sink.deliver_many([sample_exchange(9)])
        finally:
            await sink.close()
        assert 3 == (await js.stream_info(names[0])).state.messages

    async def test_no_stream_for_the_subject_is_transient(self, nats_url: str, names: tuple[str, str]) -> None:
        """Publishing where no stream listens fails transiently (an operator may still create it)."""
        sink = make_sink(nats_url, names, stream=None, create_stream=False)
        try:
            (result,) = await sink.deliver_many([sample_exchange(1)])
        finally:
            await sink.close()
        assert isinstance(result, TransientError)

    async def test_broker_down_is_transient(self, names: tuple[str, str]) -> None:
        """Nobody listening: start() returns, delivery fails with TransientError and holds back the rest."""
        sink = make_sink(f"nats://127.0.0.1:{free_port()}", names)
        await sink.start()
        try:
            first, second = await sink.deliver_many([sample_exchange(1), sample_exchange(2)])
        finally:
            await sink.close()
        assert isinstance(first, TransientError)
        assert "NOT_ATTEMPTED" == repr(second)

    async def test_token_authentication(self, tmp_path: Path, names: tuple[str, str]) -> None:
        """Against a server requiring a token: the configured token gets in, none is refused."""
        with nats_server(tmp_path, "--auth", "s3cret-token") as url:
            denied = make_sink(url, names)
            allowed = make_sink(url, names, auth={"token": "s3cret-token"})
            try:
                (refused,) = await denied.deliver_many([sample_exchange(1)])
                assert [None] == await allowed.deliver_many([sample_exchange(1)])
            finally:
                await denied.close()
                await allowed.close()
        assert isinstance(refused, TransientError)


async def stream_messages(js: JetStreamContext, stream: str) -> int:
    """Messages in `stream`; 0 while the sink has not created it yet (it does so in the background)."""
    try:
        return int((await js.stream_info(stream)).state.messages)
    except nats.js.errors.NotFoundError:
        return 0


class TestEngineWithNatsSink:
    async def test_engine_publishes_each_received_message(self, tmp_path: Path, nats_url: str,
                                                          names: tuple[str, str], js: JetStreamContext) -> None:
        """An engine with a nats sink: an ACKed ADT ends as one Bundle in the stream, named by its id."""
        stream, prefix = names
        config = tmp_path / "engine.yaml"
        config.write_text(
            f"""store:
  path: {tmp_path / 'store.db'}
admin:
  listen: 127.0.0.1:0
channels:
  - name: adt
    listen: 127.0.0.1:0
    pipeline:
      - type: v2_to_fhir
        fhir_version: R4B
    sinks:
      - type: nats
        servers: [{nats_url}]
        subject: {prefix}.{{channel}}.{{message_type}}
        stream: {stream}
        create_stream: true
""",
            encoding="utf-8",
        )
        engine = Engine(load_config(config))
        await engine.start()
        try:
            ack = await exchange("127.0.0.1", engine.channels["adt"].server.port, adt_a01("NATS1").encode())
            assert "AA" == msa(ack)[0]
            deadline = time.monotonic() + 15
            while await stream_messages(js, stream) < 1:
                assert time.monotonic() < deadline, "the Bundle never reached the stream"
                await asyncio.sleep(0.02)
        finally:
            await engine.stop(5)
        stored = await js.get_msg(stream, 1)
        assert f"{prefix}.adt.ADT_A01" == stored.subject
        bundle = json.loads(stored.data)
        assert stored.headers is not None and f"adt:{bundle['id'].split('-')[-1]}" == stored.headers["Nats-Msg-Id"]
        assert "Patient" in {entry["resource"]["resourceType"] for entry in bundle["entry"]}
