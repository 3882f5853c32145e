"""Per-peer token buckets for the MLLP listener: connection rate and message rate.

A bucket holds up to `burst` tokens and gains `per_second` tokens a second. Connections
use `try_take` (no token: the connection is refused at once). Messages use `reserve`:
the token is always taken, possibly on credit, and the caller learns how long to wait
before the token is really there. Waiting callers thus queue up in arrival order without
polling, and a peer's several connections share one budget.

Buckets are keyed by peer address and bounded in number (DESIGN.md §5.3): a bucket that
has refilled completely carries no information (a new bucket would be identical), so it
is dropped when the table grows; only if every bucket is still refilling are the least
recently used ones dropped, which at worst gives those peers a fresh burst.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

#: Peers tracked per listener before buckets are swept.
MAX_PEERS = 10_000


class RateSpec(Protocol):
    """What a limit needs: LimitsConfig's RateLimitConfig fits, as does `Rate`."""

    @property
    def per_second(self) -> float: ...

    @property
    def burst(self) -> int | None: ...


class Rate:
    """A rate limit given in code (tests, embedding)."""

    __slots__ = ("burst", "per_second")

    def __init__(self, per_second: float, burst: int | None = None) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self.burst = burst


def capacity_of(spec: RateSpec) -> float:
    """The bucket size: `burst`, or per_second rounded up, never below one token."""
    return float(spec.burst) if spec.burst is not None else max(1.0, math.ceil(spec.per_second))


class TokenBucket:
    """One peer's bucket. Times are monotonic seconds."""

    __slots__ = ("capacity", "per_second", "tokens", "updated")

    def __init__(self, per_second: float, capacity: float, now: float) -> None:
        self.per_second = per_second
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
            self.updated = now

    def try_take(self, now: float) -> bool:
        """Take a token if one is there now."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def reserve(self, now: float) -> float:
        """Take a token, on credit if need be; seconds until it is really available (0 = now)."""
        self._refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.per_second

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


class PeerBuckets:
    """Token buckets by peer address for one listener, bounded to `max_peers` entries."""

    def __init__(
        self,
        spec: RateSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self._per_second = float(spec.per_second)
        self._capacity = capacity_of(spec)
        self._clock = clock
        self._max_peers = max(1, max_peers)
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def try_take(self, peer: str) -> bool:
        """Admit one event from `peer` if its bucket has a token now."""
        now = self._clock()
        return self._bucket(peer, now).try_take(now)

    def reserve(self, peer: str) -> float:
        """Count one event from `peer`; seconds it must wait before going ahead (0 = now)."""
        now = self._clock()
        return self._bucket(peer, now).reserve(now)

    def _bucket(self, peer: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self._max_peers:
                self._sweep(now)
            bucket = self._buckets[peer] = TokenBucket(self._per_second, self._capacity, now)
        return bucket

    def _sweep(self, now: float) -> None:
        """Forget full buckets; if that is not enough, the least recently used quarter too."""
        for peer in [p for p, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[peer]
        if len(self._buckets) >= self._max_peers:
            by_age = sorted(self._buckets.items(), key=lambda item: item[1].updated)
            for peer, _ in by_age[: max(1, len(by_age) // 4)]:
                del self._buckets[peer]
