"""The work half: one runner per channel leases stored messages and drives them
through the channel's stages to its sinks.

Delivery is at-least-once; sinks are idempotent so a redelivery changes nothing
downstream. Order: the store never leases a message while an earlier one with the same
ordering key is unfinished, and sinks stop at the first transient failure, so nothing
overtakes a message that will be retried. One bad message never stops the channel:
permanent failures are dead-lettered at once, transient ones after the retry policy
is exhausted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from engine.obs import metrics
from engine.pipeline.workers import InlineExecutor, StageExecutor, StageOutcome, failure_reason
from engine.types import (
    NOT_ATTEMPTED,
    Exchange,
    PermanentError,
    Sink,
    Stage,
    Status,
    Store,
    StoredMessage,
    TransientError,
)

log = structlog.get_logger("hl7engine.runner")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 1.0
    max_s: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +/- fraction of the delay, so retries of many messages spread out
    max_attempts: int = 10  # 0 = retry forever (a sink down for days keeps its backlog)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempts - 1))
        spread = base * self.jitter
        delay = base + random.uniform(-spread, spread)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_s))
        return max(0.0, delay)

    def exhausted(self, attempts: int) -> bool:
        return self.max_attempts > 0 and attempts >= self.max_attempts


class Runner:
    """Leases and processes one channel's messages until stopped."""

    def __init__(
        self,
        channel: str,
        store: Store,
        stages: Sequence[Stage],
        sinks: Sequence[Sink],
        *,
        executor: StageExecutor | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = 256,
        idle_poll_s: float = 1.0,
    ) -> None:
        self.channel = channel
        self._store = store
        self._executor: StageExecutor = executor or InlineExecutor(stages)
        self._sinks = list(sinks)
        self._retry = retry or RetryPolicy()
        self._batch_size = batch_size
        self._idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._blocked_streak = 0
        self.processed = 0
        # Metric children by label, bound once: a labels() lookup per message adds up.
        self._bound_sink_metrics: dict[str, tuple[Counter, Histogram]] = {}
        self._stage_latency: dict[str, Histogram] = {}

    # ------------------------------------------------------------------ lifecycle

    async def prime(self, timeout: float = 120.0) -> None:
        """Warm the stages up before the first lease (see workers.PRIME_MESSAGE); never fatal."""
        try:
            await asyncio.wait_for(self._executor.prime(), timeout)
        except Exception as exc:  # a failed warm-up only means the first batch pays for it
            log.warning("stages_prime_failed", channel=self.channel, error_type=exc.__class__.__name__)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"runner-{self.channel}")

    def wake(self) -> None:
        """Called by intake after a commit: new work is there."""
        self._wake.set()

    async def stop(self, timeout: float) -> bool:
        """Finish the batch in hand, then stop. Returns False if it had to be cancelled."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return True
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if done:
            return True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return False

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                worked = await self.run_once()
            except Exception as exc:  # the store failed; back off, never die
                log.error("runner_error", channel=self.channel, error_type=exc.__class__.__name__)
                await self._sleep(self._idle_poll_s)
                continue
            if worked:
                self._blocked_streak = 0
            else:
                await self._idle()

    async def _idle(self) -> None:
        due = await self._store.next_due(self.channel)
        now = time.time()
        if due is None or due > now:
            # Nothing due yet: sleep until it is, or until intake commits something new.
            self._blocked_streak = 0
            await self._sleep(self._idle_poll_s if due is None else min(self._idle_poll_s, due - now))
            return
        # Work is due but the lease found none: all of it waits behind a retrying message of
        # its ordering key (with no ordering key, the whole channel waits). Leasing again on
        # every commit would re-scan the backlog in a tight loop, so back off: 10 ms,
        # doubling to the poll interval, deaf to wakes.
        self._blocked_streak += 1
        await asyncio.sleep(min(self._idle_poll_s, 0.01 * 2 ** min(self._blocked_streak, 10)))

    async def _sleep(self, seconds: float) -> None:
        # The wake flag is cleared by run_once before it leases, not here: a commit that
        # happened after that lease must end this sleep at once, not be lost.
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    # ------------------------------------------------------------------ work

    async def run_once(self) -> bool:
        """Lease and process one batch. Returns False when nothing was due."""
        self._wake.clear()
        batch = await self._store.lease(self.channel, self._batch_size, time.time())
        if not batch:
            return False
        try:
            await self._process(batch)
        except Exception:
            # The store failed mid-batch: give unsettled messages back rather than leave
            # them `processing` (which would block their ordering key until a restart).
            with contextlib.suppress(Exception):
                await self._store.unlease([m.id for m in batch if m.status is Status.PROCESSING])
            raise
        return True

    async def _process(self, batch: list[StoredMessage]) -> None:
        outcomes = await self._executor.run(batch)
        exchanges: list[Exchange] = []
        settled: list[Coroutine[Any, Any, None]] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            self._observe(outcome)
            if outcome.error is not None:
                if outcome.unexpected is not None:
                    log.error("stage_failed", channel=self.channel, message_id=message.id,
                              error_type=outcome.unexpected)
                settled.append(self._dead(message, outcome.error))
            elif outcome.filtered:
                settled.append(self._store.complete(message.id, Status.FILTERED))
                metrics.PROCESSED.labels(self.channel, "filtered").inc()
                self.processed += 1
            else:
                # outcome.text is None unless a stage changed the text: then it is decoded
                # from the stored bytes only if a sink asks for it.
                exchange = Exchange(message=message, text=outcome.text, output=outcome.output,
                                    output_json=outcome.output_json)
                exchange.properties["unmapped"] = outcome.unmapped
                exchanges.append(exchange)
        if settled:
            await asyncio.gather(*settled)
        if not exchanges:
            return
        failed: dict[int, BaseException] = {}
        held_back: set[int] = set()
        for sink in self._sinks:
            pending = [
                e for e in exchanges
                if sink.name not in e.message.sinks_done and e.message.id not in failed
                and e.message.id not in held_back
            ]
            if not pending:
                continue
            try:
                results = await sink.deliver_many(pending)
            except Exception as exc:  # a sink bug or an unclassified error: retry the batch
                log.warning("sink_error", channel=self.channel, sink=sink.name,
                            error_type=exc.__class__.__name__)
                results = [TransientError(failure_reason(exc))] * len(pending)
            now = time.time()
            delivered, latency = self._sink_metrics(sink.name)
            delivered_count = 0
            for exchange, result in zip(pending, results, strict=True):
                message = exchange.message
                if result is None:
                    delivered_count += 1
                    latency.observe(max(0.0, now - message.received_at))
                    if len(self._sinks) > 1:  # with one sink, `complete` records it
                        await self._store.mark_sink_done(message.id, sink.name)
                    message.sinks_done = message.sinks_done | {sink.name}
                elif result is NOT_ATTEMPTED:
                    held_back.add(message.id)
                else:
                    kind = "permanent" if isinstance(result, PermanentError) else "transient"
                    metrics.DELIVERIES.labels(self.channel, sink.name, kind).inc()
                    failed[message.id] = result  # type: ignore[assignment]
            if delivered_count:
                delivered.inc(delivered_count)
        # Issued together so the store commits them in one transaction (one fsync).
        updates: list[Coroutine[Any, Any, None]] = []
        done: list[int] = []
        for exchange in exchanges:
            message = exchange.message
            if message.id in failed:
                updates.append(self._fail(message, failed[message.id]))
            elif message.id not in held_back:
                done.append(message.id)
        if done:
            complete_many = getattr(self._store, "complete_many", None)
            if complete_many is not None:  # one statement for the batch, where the store offers it
                updates.append(complete_many(done, Status.DONE))
            else:
                updates.extend(self._store.complete(message_id, Status.DONE) for message_id in done)
            metrics.PROCESSED.labels(self.channel, "done").inc(len(done))
            self.processed += len(done)
        if held_back:
            updates.append(self._store.unlease(sorted(held_back)))
        await asyncio.gather(*updates)

    def _sink_metrics(self, sink: str) -> tuple[Counter, Histogram]:
        """The sink's ok-delivery counter and latency histogram, label lookups done once."""
        bound = self._bound_sink_metrics.get(sink)
        if bound is None:
            bound = (metrics.DELIVERIES.labels(self.channel, sink, "ok"),
                     metrics.DELIVERY_LATENCY.labels(self.channel, sink))
            self._bound_sink_metrics[sink] = bound
        return bound

    def _observe(self, outcome: StageOutcome) -> None:
        for stage_name, seconds in outcome.timings:
            histogram = self._stage_latency.get(stage_name)
            if histogram is None:
                histogram = self._stage_latency[stage_name] = metrics.STAGE_LATENCY.labels(self.channel, stage_name)
            histogram.observe(seconds)
        for segment, field_no in outcome.unmapped:
            metrics.FIELDS_UNMAPPED.labels(self.channel, segment, field_no).inc()

    async def _fail(self, message: StoredMessage, exc: BaseException) -> None:
        reason = failure_reason(exc)
        if isinstance(exc, PermanentError):
            await self._dead(message, reason)
            return
        if self._retry.exhausted(message.attempts):
            await self._dead(message, f"retries exhausted after {message.attempts} attempts: {reason}")
            return
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        when = time.time() + self._retry.delay(message.attempts, retry_after)
        await self._store.schedule_retry(message.id, reason, when)
        metrics.PROCESSED.labels(self.channel, "retry").inc()
        log.info("message_retry", channel=self.channel, message_id=message.id,
                 attempts=message.attempts, reason=reason)

    async def _dead(self, message: StoredMessage, reason: str) -> None:
        await self._store.dead_letter(message.id, reason)
        metrics.PROCESSED.labels(self.channel, "dead").inc()
        self.processed += 1
        log.warning("message_dead_lettered", channel=self.channel, message_id=message.id, reason=reason)
