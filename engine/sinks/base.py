"""Shared behaviour for sinks that deliver one exchange at a time."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from engine.types import (
    NOT_ATTEMPTED,
    DeliveryResult,
    Exchange,
    PermanentError,
    TransientError,
)


class OneByOneSink(abc.ABC):
    """Implements `Sink.deliver_many` on top of a per-exchange `deliver`.

    Subclasses raise TransientError or PermanentError from `deliver`; this class applies
    the ordering rule of the Sink protocol (stop at the first transient failure).
    """

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook, most sinks need nothing
        """Connect or check the target; raise TransientError when it is not reachable yet."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    @abc.abstractmethod
    async def deliver(self, exchange: Exchange) -> None:
        """Deliver one exchange idempotently."""

    async def deliver_many(self, exchanges: Sequence[Exchange]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for index, exchange in enumerate(exchanges):
            try:
                await self.deliver(exchange)
            except PermanentError as exc:
                results.append(exc)
                continue
            except TransientError as exc:
                results.append(exc)
                results.extend(NOT_ATTEMPTED for _ in exchanges[index + 1 :])
                break
            results.append(None)
        return results
