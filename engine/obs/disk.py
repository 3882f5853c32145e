"""Free space on the store's filesystem, for the "disk nearly full" alert.

A full disk makes the store refuse commits, and the engine then answers AR/CE with
ERR-3 207 (DESIGN.md §4): senders queue up on their side. The alert
(config/prometheus/alerts.yml, HL7EngineStoreDiskNearlyFull) warns before that happens,
without needing node_exporter on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.obs import metrics


def filesystem_space(path: Path) -> tuple[int, int] | None:
    """(available bytes, size bytes) of the filesystem holding `path`, or None if unknown.

    `path` may not exist yet (a store before its first open): the nearest existing
    parent directory is measured instead. Available means what an unprivileged process
    may still write (statvfs f_bavail), which is what the store can use.
    """
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def record_store_filesystem(path: Path | None) -> None:
    """Set hl7engine_store_filesystem_{avail,size}_bytes for a SQLite store at `path`.

    Cheap (one statvfs): call it from the engine's periodic gauge loop. `None` (a
    PostgreSQL store) leaves the gauges unset: that disk belongs to the database server.
    """
    if path is None:
        return
    space = filesystem_space(path)
    if space is None:
        return
    avail, size = space
    metrics.STORE_FS_AVAIL.set(avail)
    metrics.STORE_FS_SIZE.set(size)
