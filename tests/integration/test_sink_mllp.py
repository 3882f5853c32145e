"""The MLLP sink against a real MLLP peer on loopback (engine/mllp/server.py with a script),
and end to end: engine A forwards over MLLP to engine B."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from engine.app import Engine
from engine.config.loader import load_config
from engine.config.models import HostPort
from engine.hl7.header import parse_header
from engine.mllp.server import ConnectionInfo, MllpLimits, MllpServer
from engine.mllp.tls import client_context, server_context
from engine.sinks.mllp import AckPolicy, MllpSink
from engine.types import NOT_ATTEMPTED, MessageQuery, PermanentError, Status, TransientError
from tests.integration.mllp_helpers import running_server, wait_until
from tests.support.brokers import sample_exchange
from tests.support.engine_proc import free_port
from tests.support.messages import adt_a01
from tests.support.mllp import exchange, msa

TIMEOUT_S = 5.0


class ScriptedPeer:
    """An MLLP handler that answers each frame as its script says, then AA.

    Script steps: "AA" / "AE:103" / "AR:207" (code and ERR-3), "mismatch" (AA for another
    control id), "hang" (no answer until `release` is set), "drop" (close the connection).
    """

    def __init__(self, script: Iterable[str] = ()) -> None:
        self.script = deque(script)
        self.received: list[bytes] = []
        self.connection_ids: list[int] = []
        self.release = asyncio.Event()

    async def __call__(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        self.received.append(payload)
        self.connection_ids.append(conn.connection_id)
        step = self.script.popleft() if self.script else "AA"
        if step == "hang":
            await self.release.wait()
            return None
        if step == "drop":
            raise ConnectionResetError("scripted drop")  # the server closes the connection
        control_id = parse_header(payload.decode("latin-1")).control_id
        if step == "mismatch":
            return self.ack("AA", "SOMEONE-ELSE")
        code, _, err = step.partition(":")
        return self.ack(code, control_id, err)

    @staticmethod
    def ack(code: str, control_id: str, err: str = "") -> bytes:
        segments = ["MSH|^~\\&|PEER|HUB|HL7ENGINE|GENHOSP|20260115083000||ACK^A01^ACK|P1|P|2.5.1",
                    f"MSA|{code}|{control_id}"]
        if err:
            segments.append(f"ERR||PID^1^3|{err}^Error^HL70357|E")
        return ("\r".join(segments) + "\r").encode()


@asynccontextmanager
async def peer_and_sink(
    script: Iterable[str] = (), *, policy: AckPolicy | None = None, timeout_s: float = TIMEOUT_S,
    limits: MllpLimits | None = None,
) -> AsyncIterator[tuple[ScriptedPeer, MllpServer, MllpSink]]:
    peer = ScriptedPeer(script)
    extra = {"limits": limits} if limits is not None else {}
    async with running_server(peer, **extra) as server:
        sink = MllpSink("mllp", "router", HostPort("127.0.0.1", server.port), timeout_s=timeout_s, policy=policy)
        await sink.start()
        try:
            yield peer, server, sink
        finally:
            peer.release.set()
            await sink.close()


class TestMllpSinkDelivery:
    async def test_aa_delivers_the_stored_bytes_exactly(self) -> None:
        """AA means delivered, and the peer received the raw stored bytes unchanged."""
        item = sample_exchange(1)
        async with peer_and_sink() as (peer, _, sink):
            assert [None] == await sink.deliver_many([item])
        assert [item.message.raw] == peer.received

    async def test_messages_share_one_persistent_connection(self) -> None:
        """Several messages go one after another over a single connection."""
        items = [sample_exchange(i) for i in (1, 2, 3)]
        async with peer_and_sink() as (peer, _, sink):
            assert [None, None, None] == await sink.deliver_many(items)
        assert [i.message.raw for i in items] == peer.received
        assert 1 == len(set(peer.connection_ids))

    async def test_ae_is_dead_lettered_by_default_and_the_next_message_flows(self) -> None:
        """AE under on_ae=dead is permanent with its ERR code; the following message is still sent."""
        async with peer_and_sink(["AE:103", "AA"]) as (_, _, sink):
            first, second = await sink.deliver_many([sample_exchange(1), sample_exchange(2)])
        assert isinstance(first, PermanentError)
        assert "mllp peer answered AE (ERR-3 103)" == str(first)
        assert second is None

    async def test_ae_under_retry_holds_back_the_rest(self) -> None:
        """AE under on_ae=retry is transient, so later messages are not attempted (order kept)."""
        async with peer_and_sink(["AE:103"], policy=AckPolicy(on_ae="retry")) as (peer, _, sink):
            first, second = await sink.deliver_many([sample_exchange(1), sample_exchange(2)])
        assert isinstance(first, TransientError)
        assert second is NOT_ATTEMPTED
        assert 1 == len(peer.received)

    async def test_ar_is_dead_lettered(self) -> None:
        """AR (rejected) is permanent under the default on_ar=dead."""
        async with peer_and_sink(["AR:200"]) as (_, _, sink):
            (result,) = await sink.deliver_many([sample_exchange(1)])
        assert isinstance(result, PermanentError)
        assert "(ERR-3 200)" in str(result)


class TestMllpSinkTransformed:
    async def test_transformed_sends_the_stage_text_and_correlates_its_msh10(self) -> None:
        """payload=transformed forwards the text a stage left, and expects its own MSH-10 in MSA-2."""
        item = sample_exchange(1)
        item.text = item.message.text().replace("CTRL1", "EDITED1").replace("\r", "\n")
        peer = ScriptedPeer()
        async with running_server(peer) as server:
            sink = MllpSink("mllp", "router", HostPort("127.0.0.1", server.port), timeout_s=TIMEOUT_S,
                            payload="transformed")
            try:
                assert [None] == await sink.deliver_many([item])
            finally:
                await sink.close()
        assert [item.text.encode()] == peer.received

    async def test_transformed_without_stage_text_sends_the_decoded_message(self) -> None:
        """With no stage text (what the runner hands over) the stored message's decoded text is sent."""
        item = sample_exchange(1)
        peer = ScriptedPeer()
        async with running_server(peer) as server:
            sink = MllpSink("mllp", "router", HostPort("127.0.0.1", server.port), timeout_s=TIMEOUT_S,
                            payload="transformed")
            try:
                assert [None] == await sink.deliver_many([item])
            finally:
                await sink.close()
        assert [item.message.text().encode()] == peer.received


class TestMllpSinkConnection:
    async def test_timeout_resets_the_connection_then_recovers(self) -> None:
        """No ACK in time: ambiguous transient failure, connection reset; the retry gets AA on a new one."""
        item = sample_exchange(1)
        async with peer_and_sink(["hang"], timeout_s=0.3) as (peer, _, sink):
            (first,) = await sink.deliver_many([item])
            assert isinstance(first, TransientError) and first.ambiguous
            peer.release.set()  # a late answer now would arrive on the old, closed connection
            assert [None] == await sink.deliver_many([item])
        assert [item.message.raw, item.message.raw] == peer.received
        assert peer.connection_ids[0] != peer.connection_ids[1]

    async def test_ack_for_another_message_never_credits_this_one(self) -> None:
        """An ACK whose MSA-2 names another control id is ambiguous; the connection is reset."""
        item = sample_exchange(1)
        async with peer_and_sink(["mismatch"]) as (peer, server, sink):
            (first,) = await sink.deliver_many([item])
            assert isinstance(first, TransientError) and first.ambiguous
            await wait_until(lambda: server.connections == 0, what="the sink to drop the connection")
            assert [None] == await sink.deliver_many([item])
        assert peer.connection_ids[0] != peer.connection_ids[1]

    async def test_dropped_connection_is_retried_once_on_a_new_one(self) -> None:
        """The peer closing an established connection without an ACK gets one immediate resend on a new one."""
        item = sample_exchange(1)
        async with peer_and_sink(["drop"]) as (peer, _, sink):
            assert [None] == await sink.deliver_many([item])
        assert [item.message.raw, item.message.raw] == peer.received
        assert 2 == len(set(peer.connection_ids))

    async def test_drop_on_a_new_connection_fails_then_reconnects(self) -> None:
        """A drop on the fresh connection too is an ambiguous transient failure; the next attempt reconnects."""
        item = sample_exchange(1)
        async with peer_and_sink(["drop", "drop"]) as (peer, _, sink):
            (first,) = await sink.deliver_many([item])
            assert isinstance(first, TransientError) and first.ambiguous
            assert [None] == await sink.deliver_many([item])
        assert 3 == len(peer.received)
        assert 3 == len(set(peer.connection_ids))

    async def test_connection_closed_while_idle_is_replaced_silently(self) -> None:
        """A peer that closed the idle connection costs nothing: the next message reconnects and is delivered."""
        async with peer_and_sink(limits=MllpLimits(idle_timeout_s=0.2)) as (peer, server, sink):
            assert [None] == await sink.deliver_many([sample_exchange(1)])
            await wait_until(lambda: server.connections == 0, what="the peer to close the idle connection")
            assert [None] == await sink.deliver_many([sample_exchange(2)])
        assert 2 == len(set(peer.connection_ids))

    async def test_peer_down_is_transient_and_start_does_not_fail(self) -> None:
        """Nobody listening: start() logs and returns, delivery fails transiently (not ambiguous)."""
        sink = MllpSink("mllp", "router", HostPort("127.0.0.1", free_port()), timeout_s=2)
        await sink.start()
        try:
            (result,) = await sink.deliver_many([sample_exchange(1)])
        finally:
            await sink.close()
        assert isinstance(result, TransientError)
        assert not result.ambiguous

    async def test_start_does_not_wait_for_a_silent_peer(self) -> None:
        """A peer that takes the TCP connection but never finishes the TLS handshake does not hold up start()."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes TCP; nobody ever answers the ClientHello
        try:
            sink = MllpSink("mllp", "router", HostPort("127.0.0.1", silent.getsockname()[1]),
                            ssl_context=client_context(verify=False), timeout_s=30)
            started = time.monotonic()
            await sink.start()
            assert time.monotonic() - started < 1.0
            await sink.close()  # cancels the pending warm-up
        finally:
            silent.close()

    async def test_tls_peer(self, tmp_path: Path) -> None:
        """With TLS the sink verifies the peer's certificate against the configured CA and delivers."""
        if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
            import trustme
        else:
            trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "srv.pem", tmp_path / "srv.key"
        ca.cert_pem.write_to_path(str(ca_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        peer = ScriptedPeer()
        async with running_server(peer, ssl_context=server_context(cert_file, key_file)) as server:
            sink = MllpSink("mllp", "router", HostPort("127.0.0.1", server.port),
                            ssl_context=client_context(ca_file), timeout_s=TIMEOUT_S)
            try:
                assert [None] == await sink.deliver_many([sample_exchange(1)])
            finally:
                await sink.close()
        assert 1 == len(peer.received)


# ---------------------------------------------------------------- engine A -> engine B


def engine_yaml(tmp: Path, name: str, pipeline: str, sink: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""store:
  path: {tmp / f'{name}.db'}
admin:
  listen: 127.0.0.1:0
channels:
  - name: {name}
    listen: 127.0.0.1:0
    pipeline: {pipeline}
    sinks:
{sink}""",
        encoding="utf-8",
    )
    return path


async def wait_for_rows(engine: Engine, statuses: frozenset[Status] | None, count: int) -> list[object]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = await engine.store.query(MessageQuery(statuses=statuses))
        if len(rows) >= count:
            return list(rows)
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} stored message(s)")


class TestEngineToEngine:
    async def test_forwarded_message_arrives_byte_exact(self, tmp_path: Path) -> None:
        """Engine A's mllp sink forwards to engine B; B stores the very bytes A received, and A marks it done."""
        b_config = engine_yaml(tmp_path, "inbound", "[{type: v2_to_fhir, fhir_version: R4B}]",
                               f"      - type: file\n        path: {tmp_path / 'b.ndjson'}\n")
        engine_b = Engine(load_config(b_config))
        await engine_b.start()
        engine_a: Engine | None = None
        try:
            b_port = engine_b.channels["inbound"].server.port
            a_config = engine_yaml(tmp_path, "router", "[]",
                                   f"      - type: mllp\n        target: 127.0.0.1:{b_port}\n        timeout_s: 5\n")
            engine_a = Engine(load_config(a_config))
            await engine_a.start()
            # Latin-1 bytes and LF terminators: anything but the exact bytes would show.
            payload = adt_a01("FWD1", family="MÜLLER", charset="8859/1", terminator="\n").encode("latin-1")
            ack = await exchange("127.0.0.1", engine_a.channels["router"].server.port, payload)
            assert ["AA", "FWD1"] == msa(ack)[:2]
            (stored,) = await wait_for_rows(engine_b, None, 1)
            assert payload == stored.raw  # type: ignore[attr-defined]
            await wait_for_rows(engine_a, frozenset({Status.DONE}), 1)
        finally:
            if engine_a is not None:
                await engine_a.stop(5)
            await engine_b.stop(5)
