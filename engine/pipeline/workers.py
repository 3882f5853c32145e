"""Where stages run: in the engine process, or in a pool of worker processes.

Mapping is CPU work (about 1 ms per ADT message, several with fhir.resources
validation). Run on the event loop it delays every ACK behind it; run in worker
processes it uses the other cores while the listener keeps answering. Both executors
share `apply_stages`, so a message gets the same outcome wherever it runs.

Workers rebuild a channel's stages from its plugin configs once per channel version and
keep them; only the raw message goes over, and only the outcome comes back (the Bundle
as JSON, the unmapped field list, or a PHI-free failure reason). Workers are plain
child processes spoken to over pipes (engine/pipeline/worker_main.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog

from engine.pipeline.worker_main import HEADER as FRAME_HEADER
from engine.pipeline.worker_main import encode as encode_frame
from engine.types import (
    EngineError,
    Exchange,
    MappingError,
    PermanentError,
    Stage,
    Status,
    StoredMessage,
    TransientError,
)

log = structlog.get_logger("hl7engine.workers")


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What a channel's stages made of one message."""

    output: dict[str, Any] | None = None
    output_json: bytes | None = None  # the output serialised once, where the stages ran
    text: str | None = None  # the v2 text, only when a stage changed it
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    filtered: bool = False
    error: str | None = None  # PHI-free reason; set when a stage failed (permanent)
    unexpected: str | None = None  # exception type when the failure was not a deliberate error
    timings: list[tuple[str, float]] = field(default_factory=list)  # (stage name, seconds)


def failure_reason(exc: BaseException) -> str:
    """A reason safe to store and show: our own errors carry PHI-free text by contract;
    anything else is reduced to its type, since its text may quote message content."""
    if isinstance(exc, EngineError):
        return f"{exc.__class__.__name__}: {exc}"
    return f"unexpected {exc.__class__.__name__}"


def apply_stages(stages: Sequence[Stage], message: StoredMessage) -> StageOutcome:
    original_text = message.text()
    exchange: Exchange | None = Exchange(message=message, text=original_text)
    timings: list[tuple[str, float]] = []
    for stage in stages:
        assert exchange is not None
        started = time.perf_counter()
        try:
            exchange = stage.process(exchange)
        except Exception as exc:
            unexpected = None if isinstance(exc, (MappingError, PermanentError)) else exc.__class__.__name__
            return StageOutcome(error=f"stage {stage.name}: {failure_reason(exc)}", unexpected=unexpected,
                                timings=timings)
        finally:
            timings.append((stage.name, time.perf_counter() - started))
        if exchange is None:
            return StageOutcome(filtered=True, timings=timings)
    assert exchange is not None
    output = exchange.output
    if output is not None and output.get("resourceType") == "Bundle":
        # Bundle.id names the stored message (`<channel>-<id>`): traceable downstream, and
        # the file sink recognises a redelivery by it.
        output.pop("id", None)  # then set last: the file sink reads it from the line's end
        output["id"] = f"{message.channel}-{message.id}"
        exchange.output = output
    return StageOutcome(output=output, output_json=exchange.output_json(),
                        unmapped=list(exchange.properties.get("unmapped", ())), timings=timings,
                        text=exchange.text if exchange.text != original_text else None)


class StageExecutor(Protocol):
    async def run(self, messages: Sequence[StoredMessage]) -> list[StageOutcome]: ...

    async def prime(self) -> None: ...


#: A made-up admission (no real person) run through a channel's stages before it takes
#: work, so the first real message does not pay for imports, code tables and validation
#: plans (~0.5 s, several seconds on a busy box: longer than a PostgreSQL lease lasts).
PRIME_MESSAGE = (
    b"MSH|^~\\&|HL7ENGINE|PRIME|HL7ENGINE|PRIME|20240101000000||ADT^A01^ADT_A01|PRIME0001|P|2.5.1\r"
    b"EVN||20240101000000\r"
    b"PID|1||PRIME0001^^^HL7ENGINE^MR||Warmup^Engine||19700101|U\r"
    b"PV1|1|I|WARD^1^1^HL7ENGINE\r"
    b"IN1|1|PLAN^Plan|PAYER^^^HL7ENGINE|Payer\r"
)


def _prime_message(channel: str, version: str) -> StoredMessage:
    return StoredMessage(
        id=0, channel=channel, raw=PRIME_MESSAGE, received_at=time.time(), status=Status.PROCESSING,
        attempts=1, sender="", control_id="", message_type="", charset="ascii", channel_version=version,
    )


class InlineExecutor:
    """Runs stages on the event loop, yielding between messages so ACKs go out."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = list(stages)

    async def run(self, messages: Sequence[StoredMessage]) -> list[StageOutcome]:
        outcomes = []
        for message in messages:
            outcomes.append(apply_stages(self._stages, message))
            await asyncio.sleep(0)
        return outcomes

    async def prime(self) -> None:
        """Run the stages once on PRIME_MESSAGE (its outcome, even a failure, is dropped)."""
        apply_stages(self._stages, _prime_message("", ""))


# ---------------------------------------------------------------------- worker side

#: Stages built in this worker, by (channel, channel version).
_BUILT: dict[tuple[str, str], list[Stage]] = {}


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """What a worker needs to build a channel's stages: picklable, no live objects."""

    channel: str
    version: str
    stages: tuple[tuple[str, dict[str, Any]], ...]  # (plugin type, config as dumped by alias)
    config_dir: str


def _stages_for(spec: ChannelSpec) -> list[Stage]:
    key = (spec.channel, spec.version)
    stages = _BUILT.get(key)
    if stages is None:
        from pathlib import Path

        from engine.registry import BuildContext, stage_registry

        registry = stage_registry()
        ctx = BuildContext(channel=spec.channel, config_dir=Path(spec.config_dir))
        stages = []
        for kind, data in spec.stages:
            plugin = registry.stage(kind)
            if plugin is None:
                raise RuntimeError(f"unknown stage type {kind!r} in worker")
            stages.append(plugin.factory(plugin.config_model.model_validate(data), ctx))
        # Keep only the newest version of each channel: reloads must not pile up stages.
        for old in [k for k in _BUILT if k[0] == spec.channel]:
            del _BUILT[old]
        _BUILT[key] = stages
    return stages


WireMessage = tuple[int, str, bytes, float, str, str]  # id, channel, raw, received_at, charset, version


def work_chunk(spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
    """Run a channel's stages over a chunk, in the worker process (engine/pipeline/worker_main.py)."""
    stages = _stages_for(spec)
    outcomes = []
    for message_id, channel, raw, received_at, charset, version in chunk:
        message = StoredMessage(
            id=message_id, channel=channel, raw=raw, received_at=received_at, status=Status.PROCESSING,
            attempts=1, sender="", control_id="", message_type="", charset=charset, channel_version=version,
        )
        outcome = apply_stages(stages, message)
        # Only the JSON crosses the process boundary: pickling the dict too would double the cost.
        outcomes.append(dataclasses.replace(outcome, output=None) if outcome.output_json else outcome)
    return outcomes


def warm_up() -> int:
    """Import the mapping code once per worker, before the first message needs it."""
    import channels.mappers.convert  # noqa: F401 - imported for its side effect of loading
    from engine.registry import stage_registry

    stage_registry()
    return os.getpid()


# ---------------------------------------------------------------------- engine side


def resolve_workers(setting: int | str) -> int:
    if setting == "auto":
        return max(0, (os.cpu_count() or 1) - 1)
    return int(setting)


class WorkerDied(Exception):
    """The worker process ended (or its pipe broke) before it replied."""


class _Worker:
    """One `python -m engine.pipeline.worker_main` process and its two pipe ends."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self._requests = process.stdin
        self._replies = process.stdout

    @classmethod
    async def spawn(cls, nice: int, ready_timeout_s: float) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.pipeline.worker_main", "--nice", str(nice),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=_READ_LIMIT,
        )
        worker = cls(process)
        try:
            kind, _ = await asyncio.wait_for(worker._read(), ready_timeout_s)
        except BaseException:
            await worker.kill()
            raise
        if kind != "ready":
            await worker.kill()
            raise WorkerDied("worker did not announce itself")
        return worker

    async def call(self, spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
        self._requests.write(encode_frame((spec, chunk)))
        try:
            await self._requests.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise WorkerDied("worker pipe closed") from exc
        kind, value = await self._read()
        if kind == "ok":
            return cast(list[StageOutcome], value)
        raise RuntimeError(f"stage worker failed: {value}")

    async def _read(self) -> tuple[str, Any]:
        try:
            header = await self._replies.readexactly(FRAME_HEADER.size)
            (size,) = FRAME_HEADER.unpack(header)
            payload = await self._replies.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise WorkerDied("worker ended before replying") from exc
        reply = pickle.loads(payload)  # noqa: S301 - our own child process, over a private pipe
        return cast(tuple[str, Any], reply)

    async def close(self, timeout_s: float) -> None:
        """End of input tells the worker to exit; kill it if it has not within `timeout_s`."""
        with contextlib.suppress(Exception):
            self._requests.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(Exception):
            self._requests.close()
        await self.process.wait()


_READ_LIMIT = 1 << 20  # StreamReader buffer; replies are read with readexactly, so any size fits


class WorkerPool:
    """Stage worker processes shared by every channel; a worker that dies is replaced.

    Each worker takes one chunk at a time (engine/pipeline/worker_main.py has the
    protocol). A chunk whose worker died, or whose caller was cancelled mid-call (the
    worker's reply would then be read by the wrong caller), costs that worker: it is
    killed and a fresh one started, and the caller hears TransientError, so the runner
    retries the batch.
    """

    def __init__(self, workers: int, nice: int = 0, ready_timeout_s: float = 120.0) -> None:
        self.workers = workers
        self.nice = nice
        self._ready_timeout_s = ready_timeout_s
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        started = await asyncio.gather(*(self._spawn() for _ in range(self.workers)))
        log.info("workers_started", workers=len(started), nice=self.nice)

    async def _spawn(self) -> _Worker:
        worker = await _Worker.spawn(self.nice, self._ready_timeout_s)
        self._all.add(worker)
        self._idle.put_nowait(worker)
        return worker

    async def submit(self, spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
        if self._closed:
            raise TransientError("stage workers are shutting down")
        worker = await self._idle.get()
        healthy = False
        try:
            result = await worker.call(spec, chunk)
            healthy = True
            return result
        except WorkerDied:
            log.error("worker_died", pid=worker.process.pid, returncode=worker.process.returncode,
                      note="a stage worker process ended; it is replaced and the batch retried")
            raise TransientError("stage worker process died; batch will be retried") from None
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                # Also on cancellation: a reply may still be on its way, and the next
                # caller must not read it. Replaced in the background, so a cancelled
                # caller (the runner stopping) is not held up by a worker's start-up.
                self._all.discard(worker)
                task = asyncio.get_running_loop().create_task(self._replace(worker))
                self._replacing.add(task)
                task.add_done_callback(self._replacing.discard)

    async def _replace(self, worker: _Worker) -> None:
        await worker.kill()
        delay = 1.0
        while not self._closed:
            try:
                await self._spawn()
                return
            except Exception as exc:  # e.g. out of memory: try again, callers wait meanwhile
                log.error("worker_spawn_failed", error_type=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        workers, self._all = list(self._all), set()
        await asyncio.gather(*(w.close(timeout_s) for w in workers), return_exceptions=True)


class PoolExecutor:
    """Runs one channel's stages in the shared worker pool, in chunks, order kept."""

    def __init__(self, pool: WorkerPool, spec: ChannelSpec) -> None:
        self._pool = pool
        self._spec = spec

    async def run(self, messages: Sequence[StoredMessage]) -> list[StageOutcome]:
        wire: list[WireMessage] = [
            (m.id, m.channel, m.raw, m.received_at, m.charset, m.channel_version) for m in messages
        ]
        # Enough chunks to keep every worker busy, big enough to amortise the pickling.
        size = max(8, math.ceil(len(wire) / max(1, self._pool.workers * 2)))
        chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
        results = await asyncio.gather(*(self._pool.submit(self._spec, c) for c in chunks))
        return [outcome for chunk in results for outcome in chunk]

    async def prime(self) -> None:
        """Build the channel's stages in every worker and run them once on PRIME_MESSAGE.

        As many calls as workers at once: each holds its worker until it replies, so
        every worker gets one.
        """
        spec = self._spec
        sample = _prime_message(spec.channel, spec.version)
        wire: list[WireMessage] = [(0, spec.channel, sample.raw, sample.received_at, "ascii", spec.version)]
        await asyncio.gather(*(self._pool.submit(spec, wire) for _ in range(self._pool.workers)))
