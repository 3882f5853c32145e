"""Operator actions on the store, shared by `hl7engine messages` and scripts.

Content views are masked by default and every view, replay and release is written to
the audit log (`hl7engine.audit`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import getpass
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored messages an operator action applies to: ids, or filters."""

    ids: tuple[int, ...] = ()
    channel: str | None = None
    statuses: frozenset[Status] = frozenset({Status.DEAD})
    since: float | None = None
    until: float | None = None
    limit: int = 100_000  # a bound on one command, so a typo cannot requeue a whole store


async def select_ids(store: Store, selection: Selection) -> list[int]:
    """Explicit ids as given; otherwise every message matching the filters, paged, bounded."""
    if selection.ids:
        return list(selection.ids)
    targets: list[int] = []
    after = 0
    while len(targets) < selection.limit:
        page = await store.query(MessageQuery(channel=selection.channel, statuses=selection.statuses,
                                              since=selection.since, until=selection.until,
                                              after_id=after, limit=500))
        targets.extend(m.id for m in page)
        if len(page) < 500:
            break
        after = page[-1].id
    return targets[: selection.limit]


async def replay_messages(config: EngineConfig, selection: Selection) -> int:
    async with opened_store(config) as store:
        targets = await select_ids(store, selection)
        count = await store.requeue(targets) if targets else 0
    audit.info("messages_replayed", count=count, actor=_actor(), via="cli", channel=selection.channel)
    return count


async def dry_run_replay(
    config: EngineConfig, candidate: EngineConfig, selection: Selection, *, diff: bool,
    out: Callable[[str], None],
) -> int:
    """Convert the selected messages with the channel as `candidate` defines it, without
    storing or sending. With `diff`, print how that output differs from what the current
    `config` makes of them. Returns how many outputs would change. The output holds
    patient data: every run is audited."""
    from engine.conversion import ConversionFailed, channel_stages, find_channel, run_stages

    changed = 0
    async with opened_store(config) as store:
        targets = await select_ids(store, selection)
        messages = [m for m in [await store.get(i) for i in targets] if m is not None]
    audit.info("replay_dry_run", count=len(messages), actor=_actor(), via="cli", diff=diff)
    stages_cache: dict[tuple[int, str], Any] = {}

    def convert(cfg: EngineConfig, channel_name: str, raw: bytes, index: int) -> str:
        key = (id(cfg), channel_name)
        if key not in stages_cache:
            channel = find_channel(cfg, channel_name)
            stages_cache[key] = (channel, channel_stages(cfg, channel))
        channel, stages = stages_cache[key]
        try:
            result = run_stages(stages, channel, raw, index)
        except ConversionFailed as exc:
            return f"(fails: {exc})"
        if result.output is None:
            return "(filtered)"
        return json.dumps(result.output, indent=1, sort_keys=True, ensure_ascii=False)

    for message in messages:
        after = convert(candidate, message.channel, message.raw, message.id)
        if not diff:
            out(f"message {message.id}:")
            out(after)
            continue
        before = convert(config, message.channel, message.raw, message.id)
        if before == after:
            out(f"message {message.id}: no change")
            continue
        changed += 1
        out(f"message {message.id}: output changes")
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), "current", "candidate",
                                         lineterm="", n=2):
            out(line)
    return changed


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
