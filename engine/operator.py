"""Operator actions on the store, shared by `hl7engine messages` and scripts.

Content views are masked by default and every view, replay and release is written to
the audit log (`hl7engine.audit`).
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from engine.config.models import EngineConfig
from engine.obs.logging import audit_logger
from engine.obs.redact import mask_message
from engine.store.factory import open_engine_store
from engine.types import MessageQuery, Status, Store, StoredMessage

audit = audit_logger()


@asynccontextmanager
async def opened_store(config: EngineConfig) -> AsyncIterator[Store]:
    store = open_engine_store(config)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="seconds")


def describe(message: StoredMessage) -> str:
    flags = " collision" if message.collision else ""
    error = f"  {message.last_error}" if message.last_error else ""
    return (f"{message.id:>8}  {message.channel:<12} {message.status.value:<9} {message.attempts:>3}  "
            f"{_when(message.received_at)}  {message.message_type:<8}{flags}{error}")


async def list_messages(
    config: EngineConfig,
    *,
    channel: str | None,
    statuses: Sequence[str] | None,
    after_id: int,
    limit: int,
    out: Callable[[str], None],
) -> None:
    query = MessageQuery(
        channel=channel,
        statuses=frozenset(Status(s) for s in statuses) if statuses else None,
        after_id=after_id,
        limit=limit,
    )
    async with opened_store(config) as store:
        rows = await store.query(query)
    out(f"{'id':>8}  {'channel':<12} {'status':<9} {'att':>3}  {'received (UTC)':<25} type")
    for message in rows:
        out(describe(message))
    if len(rows) == limit:
        out(f"(more: --after-id {rows[-1].id})")


async def show_message(config: EngineConfig, message_id: int, *, unmask: bool, out: Callable[[str], None]) -> bool:
    async with opened_store(config) as store:
        message = await store.get(message_id)
    if message is None:
        return False
    audit.info("message_viewed", message_id=message_id, unmasked=unmask, actor=_actor(), via="cli")
    out(describe(message))
    text = message.text()
    shown = text if unmask else mask_message(text)
    out(shown.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n"))
    return True


async def replay_messages(config: EngineConfig, ids: Sequence[int], *, channel: str | None) -> int:
    async with opened_store(config) as store:
        targets = list(ids)
        if channel is not None:
            after = 0
            while True:
                page = await store.query(MessageQuery(channel=channel, statuses=frozenset({Status.DEAD}),
                                                      after_id=after, limit=500))
                targets.extend(m.id for m in page)
                if len(page) < 500:
                    break
                after = page[-1].id
        count = await store.requeue(targets) if targets else 0
    audit.info("messages_replayed", count=count, actor=_actor(), via="cli", channel=channel)
    return count


async def release_messages(config: EngineConfig, ids: Sequence[int]) -> int:
    async with opened_store(config) as store:
        count = await store.release(list(ids))
    audit.info("messages_released", count=count, actor=_actor(), via="cli")
    return count


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
