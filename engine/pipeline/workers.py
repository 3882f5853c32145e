"""Where stages run: in the engine process, or in a pool of worker processes.

Mapping is CPU work (about 1 ms per ADT message, several with fhir.resources
validation). Run on the event loop it delays every ACK behind it; run in worker
processes it uses the other cores while the listener keeps answering. Both executors
share `apply_stages`, so a message gets the same outcome wherever it runs.

Workers rebuild a channel's stages from its plugin configs once per channel version and
keep them; only the raw message goes over, and only the outcome comes back (the Bundle
as a dict, the unmapped field list, or a PHI-free failure reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

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


def _run_chunk(spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
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


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: leave when the engine process is gone.

    A SIGKILLed engine cannot shut its pool down; without this its workers would live on
    as orphans, each holding the mapping code in memory, one set per crash.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _warm_up() -> int:
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


class WorkerPool:
    """One process pool shared by every channel; recreated if a worker dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _ensure(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the engine process runs threads (the store's writer)
            # and an event loop, neither of which survives a fork safely.
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context,
                initializer=_exit_with_parent, initargs=(os.getpid(),),
            )
        return self._pool

    async def start(self) -> None:
        pool = self._ensure()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, _warm_up) for _ in range(self.workers)))
        log.info("workers_started", workers=self.workers)

    async def submit(self, spec: ChannelSpec, chunk: list[WireMessage]) -> list[StageOutcome]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._ensure(), _run_chunk, spec, chunk)
        except BrokenProcessPool:
            log.error("worker_pool_broken", note="a worker process died; the pool is restarted")
            self._replace()
            raise TransientError("stage worker process died; batch will be retried") from None

    def _replace(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


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
