"""Per-peer rate limits on the MLLP listener: connections (refused) and messages (backpressure)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from engine.app import Engine
from engine.config.loader import load_config
from engine.config.models import LimitsConfig
from engine.mllp.ratelimit import PeerBuckets, Rate, TokenBucket
from engine.mllp.server import ConnectionInfo, MllpLimits
from tests.integration.mllp_helpers import RawPeer, metric, running_server, wait_until
from tests.support.messages import adt_a01
from tests.support.mllp import msa


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TimedRecorder:
    """An echo handler that notes when (loop time) each frame reached it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def __call__(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        self.times.append(asyncio.get_running_loop().time())
        return b"ACK|" + payload


def frames(*payloads: bytes) -> bytes:
    return b"".join(b"\x0b" + p + b"\x1c\r" for p in payloads)


class TestTokenBucket:
    def test_burst_then_refill(self) -> None:
        """A full bucket gives `burst` tokens at once, then one per 1/rate seconds."""
        bucket = TokenBucket(per_second=2.0, capacity=3.0, now=0.0)
        assert [True, True, True, False] == [bucket.try_take(0.0) for _ in range(4)]
        assert bucket.try_take(0.5)
        assert not bucket.try_take(0.5)

    def test_reserve_queues_waiters_in_order(self) -> None:
        """Reserving past the bucket returns growing waits of 1/rate each, never zero."""
        bucket = TokenBucket(per_second=10.0, capacity=1.0, now=0.0)
        waits = [bucket.reserve(0.0) for _ in range(4)]
        assert [0.0, 0.1, 0.2, 0.3] == pytest.approx(waits)

    def test_refill_is_capped_at_capacity(self) -> None:
        """A long quiet spell saves up at most `capacity` tokens."""
        bucket = TokenBucket(per_second=100.0, capacity=2.0, now=0.0)
        assert bucket.try_take(0.0)
        assert bucket.is_full(1000.0)
        assert [True, True, False] == [bucket.try_take(1000.0) for _ in range(3)]


class TestPeerBuckets:
    def test_peers_have_separate_budgets(self) -> None:
        """One peer spending its tokens leaves another peer's untouched."""
        buckets = PeerBuckets(Rate(1.0, burst=1), clock=FakeClock())
        assert (True, False, True) == (buckets.try_take("10.0.0.1"), buckets.try_take("10.0.0.1"),
                                       buckets.try_take("10.0.0.2"))

    def test_default_burst_is_the_rate_rounded_up(self) -> None:
        """Without `burst` the bucket holds ceil(per_second) tokens (at least one)."""
        buckets = PeerBuckets(Rate(2.5), clock=FakeClock())
        assert [True, True, True, False] == [buckets.try_take("p") for _ in range(4)]

    def test_table_stays_bounded(self) -> None:
        """Many distinct peers never grow the table past its bound; refilled buckets go first."""
        clock = FakeClock()
        buckets = PeerBuckets(Rate(1.0, burst=1), clock=clock, max_peers=100)
        for i in range(1000):
            clock.now += 0.01
            buckets.try_take(f"10.0.{i // 256}.{i % 256}")
            assert len(buckets) <= 100

    def test_accepts_the_config_model(self) -> None:
        """The channel's `limits.peer_message_rate` model is used as is."""
        limits = LimitsConfig.model_validate({"peer_message_rate": {"per_second": 5, "burst": 2}})
        assert limits.peer_message_rate is not None
        buckets = PeerBuckets(limits.peer_message_rate, clock=FakeClock())
        assert [True, True, False] == [buckets.try_take("p") for _ in range(3)]


class TestConnectionRate:
    async def test_over_the_rate_is_refused_before_any_byte(self) -> None:
        """With burst 2 and a slow refill, the third connection is closed at once and counted."""
        limits = MllpLimits(peer_connection_rate=Rate(0.001, burst=2))
        async with running_server(limits=limits) as server:
            peers = [await RawPeer.connect(server.port) for _ in range(2)]
            for i, peer in enumerate(peers):
                await peer.send(b"hello %d" % i)
                assert b"ACK|hello %d" % i == await peer.read_frame()
            refused = await RawPeer.connect(server.port)
            with contextlib.suppress(ConnectionError):  # the server may have closed it already
                await refused.write(frames(b"too soon"))
            assert b"" == await refused.read_eof()
            assert 1 == metric("hl7engine_connections_total", channel=server.channel, outcome="refused_rate")
            assert 2 == metric("hl7engine_connections_total", channel=server.channel, outcome="accepted")
            for peer in peers:
                await peer.close()


class TestMessageRate:
    async def test_frames_over_the_rate_wait_and_every_ack_arrives(self) -> None:
        """Six frames in one write at 20/s with burst 2: all six answered in order, spaced by the rate."""
        recorder = TimedRecorder()
        limits = MllpLimits(peer_message_rate=Rate(20.0, burst=2))
        async with running_server(recorder, limits=limits) as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frames(*(b"m%d" % i for i in range(6))))
            acks = [await peer.read_frame() for _ in range(6)]
            await peer.close()
            assert [b"ACK|m%d" % i for i in range(6)] == acks
            gaps = [b - a for a, b in zip(recorder.times[1:], recorder.times[2:], strict=False)]
            assert all(gap >= 0.05 * 0.8 for gap in gaps), gaps  # 1/20 s, with timer slack
            assert 4 <= metric("hl7engine_messages_throttled_total", channel=server.channel)

    async def test_connections_of_one_peer_share_the_budget(self) -> None:
        """Two connections from one address together get no more than the peer's rate."""
        recorder = TimedRecorder()
        limits = MllpLimits(peer_message_rate=Rate(20.0, burst=1))
        async with running_server(recorder, limits=limits) as server:
            peers = [await RawPeer.connect(server.port) for _ in range(2)]
            for peer in peers:
                await peer.write(frames(b"a", b"b"))
            for peer in peers:
                assert [b"ACK|a", b"ACK|b"] == [await peer.read_frame(), await peer.read_frame()]
                await peer.close()
            # Four frames, one token at once and one per 50 ms: at least 150 ms from first to last.
            assert recorder.times[-1] - recorder.times[0] >= 0.15 * 0.8

    async def test_a_throttled_connection_is_neither_idle_nor_past_its_frame_deadline(self) -> None:
        """Waiting for tokens longer than the idle and frame timeouts closes nothing."""
        limits = MllpLimits(peer_message_rate=Rate(10.0, burst=1), idle_timeout_s=0.1, frame_timeout_s=0.1)
        async with running_server(limits=limits) as server:
            peer = await RawPeer.connect(server.port)
            await peer.write(frames(b"1", b"2", b"3", b"4"))
            assert [b"ACK|1", b"ACK|2", b"ACK|3", b"ACK|4"] == [await peer.read_frame() for _ in range(4)]
            await peer.close()
            for reason in ("idle", "frame_deadline"):
                assert 0 == metric("hl7engine_connections_closed_total", channel=server.channel, reason=reason)

    async def test_reading_stops_while_throttled(self) -> None:
        """While a peer waits for tokens the listener reads nothing more from it (TCP backpressure)."""
        recorder = TimedRecorder()
        limits = MllpLimits(peer_message_rate=Rate(1.5, burst=1))
        async with running_server(recorder, limits=limits) as server:
            labels = {"channel": server.channel}
            peer = await RawPeer.connect(server.port)
            await peer.write(frames(b"first", b"second"))
            assert b"ACK|first" == await peer.read_frame()
            await wait_until(lambda: metric("hl7engine_messages_throttled_total", **labels) >= 1, what="throttle")
            read_so_far = metric("hl7engine_received_bytes_total", **labels)
            await peer.write(frames(b"third"))
            # "second" waits 2/3 s for its token; for the first 0.15 s of it "third" must stay unread.
            with pytest.raises(AssertionError):
                await wait_until(lambda: metric("hl7engine_received_bytes_total", **labels) > read_so_far,
                                 timeout=0.15, what="a read while throttled")
            assert [b"ACK|second", b"ACK|third"] == [await peer.read_frame(), await peer.read_frame()]
            await peer.close()


# ---------------------------------------------------------------- through the engine


def engine_config(tmp: Path, limits: str) -> Path:
    path = tmp / "engine.yaml"
    path.write_text(f"""store:
  path: {tmp / 'store.db'}
admin:
  listen: 127.0.0.1:0
workers: 0
channels:
  - name: ratelimited
    listen: 127.0.0.1:0
    limits:
{limits}    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: file
        path: {tmp / 'out.ndjson'}
""", encoding="utf-8")
    return path


class TestEngineRateLimits:
    async def test_configured_limits_reach_the_listener(self, tmp_path: Path) -> None:
        """`limits.peer_connection_rate` and `peer_message_rate` from the channel config are enforced."""
        limits = ("      peer_connection_rate: {per_second: 0.001, burst: 1}\n"
                  "      peer_message_rate: {per_second: 20, burst: 1}\n")
        engine = Engine(load_config(engine_config(tmp_path, limits)))
        before = metric("hl7engine_connections_total", channel="ratelimited", outcome="refused_rate")
        await engine.start()
        try:
            port = engine.channels["ratelimited"].server.port
            peer = await RawPeer.connect(port)
            started = time.monotonic()
            await peer.write(frames(adt_a01("R1").encode(), adt_a01("R2").encode(), adt_a01("R3").encode()))
            acks = [await peer.read_frame(timeout=10) for _ in range(3)]
            assert [["AA", "R1"], ["AA", "R2"], ["AA", "R3"]] == [msa(a)[:2] for a in acks]
            assert time.monotonic() - started >= 0.1 * 0.8  # two waits of 1/20 s
            second = await RawPeer.connect(port)
            assert b"" == await second.read_eof()
            assert 1 == metric("hl7engine_connections_total", channel="ratelimited", outcome="refused_rate") - before
            await peer.close()
        finally:
            await engine.stop(5)
