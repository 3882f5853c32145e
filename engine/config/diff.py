"""`hl7engine validate --diff`: what a reload would change in a running engine."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from engine.config.models import EngineConfig


def running_channels(admin_url: str, token: str | None = None, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """The running engine's channels (name -> summary with `version` and `config`)."""
    request = urllib.request.Request(f"{admin_url.rstrip('/')}/api/channels")  # noqa: S310 - operator-given URL
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body = json.loads(response.read())
    items = body.get("channels", body) if isinstance(body, dict) else body
    return {item["name"]: item for item in items}


def describe_changes(running: dict[str, dict[str, Any]], new: EngineConfig) -> list[str]:
    """One line per channel that a reload would add, remove or change (with the keys)."""
    lines: list[str] = []
    proposed = {c.name: c for c in new.channels}
    for name in sorted(proposed.keys() - running.keys()):
        lines.append(f"+ {name}: added (listen {proposed[name].listen})")
    for name in sorted(running.keys() - proposed.keys()):
        lines.append(f"- {name}: removed")
    for name in sorted(proposed.keys() & running.keys()):
        current = running[name]
        channel = proposed[name]
        if current.get("version") == channel.version:
            continue
        before = current.get("config") or {}
        after = channel.model_dump(mode="json", by_alias=True, exclude_none=True)
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        rebind = any(k in {"listen", "tls", "limits", "allow"} for k in keys)
        note = " (listener rebinds: open connections are closed)" if rebind else " (connections kept)"
        lines.append(f"~ {name}: {', '.join(keys) or 'changed'}{note}")
    return lines


def main_diff(new: EngineConfig, admin_url: str, out: Any, token: str | None = None) -> int:
    try:
        running = running_channels(admin_url, token)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out(f"cannot reach the running engine at {admin_url}: {exc.__class__.__name__}")
        return 1
    lines = describe_changes(running, new)
    for line in lines or ["no channel changes"]:
        out(line)
    return 0
