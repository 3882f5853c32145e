"""Polling with a deadline, for conditions that have no event to wait on (another
process's state, a file another process writes). Fails loudly when the deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def poll(probe: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.1, what: str = "") -> T:
    """Call `probe` until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'a condition'}")
        time.sleep(interval)


async def apoll(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 15.0, interval: float = 0.02,
                what: str = "") -> T:
    """`poll` for async probes."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'a condition'}")
        await asyncio.sleep(interval)
