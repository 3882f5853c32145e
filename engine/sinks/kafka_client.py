"""The `type: kafka` sink itself: one aiokafka producer (behaviour: engine/sinks/kafka.py).

Kept apart from the config model so that registering the sink, and validating a config
that does not use it, never loads aiokafka: only `engine.sinks.kafka._build` imports
this module, when a channel has a kafka sink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from engine.sinks.kafka import KeyMode, patient_key
from engine.sinks.mllp import WarmUp
from engine.sinks.payload import PayloadMode, broker_messages, headers
from engine.types import NOT_ATTEMPTED, DeliveryResult, EngineError, Exchange, PermanentError, TransientError

log = structlog.get_logger("hl7engine.sinks.kafka")

#: Broker answers that no retry can change: the record itself is unacceptable.
_PERMANENT = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError)


def classify(exc: BaseException) -> EngineError:
    """PermanentError for a record the broker will never take, else TransientError
    (ambiguous: the record may have been written before the failure was seen)."""
    if isinstance(exc, _PERMANENT):
        return PermanentError(f"kafka refused the record: {type(exc).__name__}")
    return TransientError(f"kafka publish failed: {type(exc).__name__}", ambiguous=True)


class KafkaSink:
    """One aiokafka producer; records of a batch are pipelined (module docstring)."""

    def __init__(
        self,
        name: str,
        channel: str,
        topic: str,
        producer_options: dict[str, Any],
        *,
        key: KeyMode = "patient",
        key_secret: bytes | None = None,
        payload: PayloadMode = "bundle",
    ) -> None:
        self.name = name
        self._channel = channel
        self._topic = topic
        self._options = producer_options
        self._key_mode: KeyMode = key
        self._key_secret = key_secret
        self._payload: PayloadMode = payload
        self._producer: AIOKafkaProducer | None = None
        self._warm_up = WarmUp()

    async def start(self) -> None:
        """Connect in the background (WarmUp); a broker that is down does not stop the
        engine: the runner retries, and the next delivery connects."""
        await self._warm_up.start(self._ready, self._unreachable)

    def _unreachable(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, TransientError) else type(exc).__name__
        log.warning("kafka_sink_unreachable", channel=self._channel, sink=self.name, reason=reason)

    async def close(self) -> None:
        await self._warm_up.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except KafkaError as exc:
                log.info("kafka_sink_close_failed", channel=self._channel, sink=self.name,
                         error_type=type(exc).__name__)

    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]:
        try:
            async with self._warm_up.lock:
                producer = await self._ready()
        except TransientError as exc:
            return [exc, *(NOT_ATTEMPTED for _ in exchanges[1:])]
        plans: list[EngineError | list[asyncio.Future[Any]]] = []
        for exchange in exchanges:
            try:
                plans.append(await self._enqueue(producer, exchange))
            except PermanentError as exc:
                plans.append(exc)
            except KafkaError as exc:
                error = classify(exc)
                plans.append(error)
                if isinstance(error, TransientError):
                    break  # nothing after it may overtake it
        results: list[DeliveryResult] = []
        stopped = False
        for plan in plans:
            if isinstance(plan, EngineError):
                outcome: DeliveryResult = plan
            else:
                # Awaited even after a failure, so no record's outcome goes unread.
                answers = await asyncio.gather(*plan, return_exceptions=True)
                failure = next((a for a in answers if isinstance(a, BaseException)), None)
                outcome = None if failure is None else classify(failure)
            if stopped:
                results.append(NOT_ATTEMPTED)
                continue
            results.append(outcome)
            stopped = isinstance(outcome, TransientError)
        results.extend(NOT_ATTEMPTED for _ in exchanges[len(results):])
        return results

    async def _enqueue(self, producer: AIOKafkaProducer, exchange: Exchange) -> list[asyncio.Future[Any]]:
        """Hand one exchange's records to the producer; their futures resolve when acked."""
        messages = broker_messages(exchange, self._payload)
        key = self._key(exchange)
        futures: list[asyncio.Future[Any]] = []
        for message in messages:
            record_headers = [(k, v.encode()) for k, v in headers(exchange, message, count=len(messages)).items()]
            futures.append(await producer.send(self._topic, message.body, key=key, headers=record_headers))
        return futures

    def _key(self, exchange: Exchange) -> bytes | None:
        if self._key_mode == "patient":
            return patient_key(exchange, self._key_secret)
        if self._key_mode == "message":
            return f"{exchange.message.channel}:{exchange.message.id}".encode()
        return None

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(**self._options)
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise TransientError(f"kafka connect failed: {type(exc).__name__}") from None
        except BaseException:  # cancelled (engine stopping): leave no half-started producer behind
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer
        return producer
