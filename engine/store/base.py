"""Store rules shared by every implementation (SQLite today, PostgreSQL later).

Only pure logic lives here: which statuses mean what, how a lease picks messages under
per-key ordering, how `sinks_done` is encoded. Each backend keeps its own SQL and its
own way of reaching the database, so one contract test suite can hold them all to the
same behaviour (DESIGN.md §2, tests/contract/).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from engine.types import Status

#: Statuses a lease may hand out (RETRY only once its next_attempt_at has passed).
LEASABLE: frozenset[Status] = frozenset({Status.RECEIVED, Status.RETRY})

#: Statuses that `prune` may delete. DEAD is kept until an operator releases it.
FINISHED: frozenset[Status] = frozenset({Status.DONE, Status.FILTERED, Status.RELEASED})

#: Statuses `complete` accepts.
COMPLETIONS: frozenset[Status] = frozenset({Status.DONE, Status.FILTERED})

#: Statuses an operator may replay with `requeue`.
REQUEUEABLE: frozenset[Status] = frozenset({Status.DEAD, Status.RELEASED, Status.DONE, Status.FILTERED})

#: Replaying these keeps `sinks_done`, so the replay reaches only the sinks that never got
#: the message. Replaying a done/filtered message clears it: the operator asked for a full
#: redelivery, and sinks are idempotent.
REQUEUE_KEEPS_SINKS_DONE: frozenset[Status] = frozenset({Status.DEAD, Status.RELEASED})

#: Largest page `query` returns, whatever the caller asks: pages stay bounded in memory.
MAX_QUERY_LIMIT = 1000

#: Rows one statement may name by id (well under SQLite's 32766 bound-parameter limit
#: and PostgreSQL's 65535), so bulk operator actions are split into chunks.
ID_CHUNK = 500

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def clamp_limit(limit: int) -> int:
    """A query page size between 0 and MAX_QUERY_LIMIT."""
    return max(0, min(limit, MAX_QUERY_LIMIT))


def check_completion(status: Status) -> Status:
    """`complete` accepts only a final work outcome; anything else is a caller bug."""
    if status not in COMPLETIONS:
        raise ValueError(f"complete() takes done or filtered, not {status.value}")
    return status


# ---------------------------------------------------------------- sinks_done


def encode_sinks(sinks: Iterable[str]) -> str:
    """The text stored in the `sinks_done` column: a sorted JSON array of sink names."""
    return json.dumps(sorted(set(sinks)), separators=(",", ":"))


def decode_sinks(text: str | None) -> frozenset[str]:
    """Inverse of `encode_sinks`; an empty or NULL column is no sink."""
    if not text:
        return frozenset()
    names = json.loads(text)
    return frozenset(str(n) for n in names)


# ---------------------------------------------------------------- lease planning


@dataclass(frozen=True, slots=True)
class LeaseCandidate:
    """One unfinished row as the lease scan sees it (no payload: the scan stays cheap)."""

    id: int
    ordering_key: str
    status: Status
    next_attempt_at: float | None


class LeasePlanner:
    """Chooses which unfinished messages one lease hands out, under per-key ordering.

    Feed it a channel's unfinished rows (received, processing, retry) in ascending id
    order, one bounded window at a time. A row is chosen when it is due (received, or
    retry whose next_attempt_at has passed) and nothing earlier with its ordering key is
    held back. A key is blocked from the first row of it that is not chosen: a message in
    processing (another worker has it), a retry not yet due, or a due row that did not fit
    in `limit`. Later rows of a blocked key are skipped, rows of other keys flow on, so
    one stuck key never starves the rest (DESIGN.md §5.5).

    The backend decides how far to scan; `blocked_keys` lets it exclude keys already
    known to be blocked from the next window.
    """

    def __init__(self, limit: int, now: float) -> None:
        self._limit = max(0, limit)
        self._now = now
        self._blocked: set[str] = set()
        self._chosen: list[int] = []

    @property
    def full(self) -> bool:
        return len(self._chosen) >= self._limit

    @property
    def chosen(self) -> list[int]:
        """Ids to lease, ascending."""
        return list(self._chosen)

    @property
    def blocked_keys(self) -> frozenset[str]:
        return frozenset(self._blocked)

    def is_due(self, row: LeaseCandidate) -> bool:
        if row.status is Status.RECEIVED:
            return True
        if row.status is Status.RETRY:
            return row.next_attempt_at is None or row.next_attempt_at <= self._now
        return False

    def feed(self, rows: Iterable[LeaseCandidate]) -> None:
        """Consider `rows` (ascending id, after every row fed before)."""
        for row in rows:
            if self.full:
                # Nothing later can be chosen, and blocking more keys changes nothing: stop
                # here, so the backend converts no more rows (a window is limit x 8 rows).
                return
            if row.ordering_key in self._blocked:
                continue
            if self.is_due(row):
                self._chosen.append(row.id)
            else:
                self._blocked.add(row.ordering_key)


# ---------------------------------------------------------------- quarantine


