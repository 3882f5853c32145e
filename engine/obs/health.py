"""Readiness checks: named pass/fail flags that /readyz reports and hl7engine_ready mirrors.

The engine marks each check as its parts come up ("store", "listener:adt") and down
(draining). Details are fixed words chosen by the engine, never message content.
"""

from __future__ import annotations

import threading

from engine.obs import metrics


class Readiness:
    """A set of named checks; ready when there is at least one and all pass."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[bool, str]] = {name: (False, "starting") for name in names}
        self._publish()

    def mark(self, name: str, ok: bool, detail: str = "") -> None:
        """Set one check; `detail` is a short PHI-free word such as "bound" or "draining"."""
        with self._lock:
            self._checks[name] = (ok, detail or ("ok" if ok else "failing"))
        self._publish()

    def remove(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)
        self._publish()

    def status(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: detail}); the shape AdminBackend.is_ready returns."""
        with self._lock:
            checks = dict(self._checks)
        ready = bool(checks) and all(ok for ok, _ in checks.values())
        return ready, {name: detail for name, (_, detail) in sorted(checks.items())}

    def _publish(self) -> None:
        ready, _ = self.status()
        metrics.READY.set(1 if ready else 0)
