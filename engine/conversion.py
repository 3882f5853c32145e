"""Running a channel's stages outside the engine: `hl7engine convert` and `hl7engine test`.

Nothing is stored or sent; this is how ops check what a channel makes of a message.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.app import build_stages
from engine.config.models import ChannelConfig, EngineConfig
from engine.hl7.batch import split_messages
from engine.pipeline.workers import apply_stages
from engine.registry import BuildContext, Registry, default_registry
from engine.types import EngineError, Stage, Status, StoredMessage


class ConversionFailed(EngineError):
    """A message could not be converted; the text names the message number and the reason."""


@dataclass(slots=True)
class ConversionResult:
    index: int  # 1-based position in the input
    output: dict[str, Any] | None  # None when a filter dropped the message
    unmapped: list[tuple[str, str]] = field(default_factory=list)


def find_channel(config: EngineConfig, name: str) -> ChannelConfig:
    for channel in config.channels:
        if channel.name == name:
            return channel
    known = ", ".join(c.name for c in config.channels) or "none"
    raise ConversionFailed(f"no channel named {name!r} (channels: {known})")


def channel_stages(config: EngineConfig, channel: ChannelConfig, registry: Registry | None = None) -> list[Stage]:
    ctx = BuildContext(channel=channel.name, config_dir=config.base_dir)
    return build_stages(channel, registry or default_registry(), ctx)


def run_stages(stages: list[Stage], channel: ChannelConfig, raw: bytes, index: int = 1) -> ConversionResult:
    """One message through the stages, exactly as the runner does it (apply_stages)."""
    message = StoredMessage(
        id=index, channel=channel.name, raw=raw, received_at=time.time(), status=Status.PROCESSING,
        attempts=1, sender="", control_id="", message_type="", charset=channel.charset_fallback,
        channel_version=channel.version,
    )
    outcome = apply_stages(stages, message)
    if outcome.error is not None:
        raise ConversionFailed(f"message {index}: {outcome.error}")
    if outcome.filtered or outcome.output is None:
        return ConversionResult(index, None)
    output = dict(outcome.output)
    output.pop("id", None)  # the runner's <channel>-<message id>: meaningless outside the store
    return ConversionResult(index, output, list(outcome.unmapped))


def convert_file(config: EngineConfig, channel_name: str, data: bytes) -> Iterator[ConversionResult]:
    channel = find_channel(config, channel_name)
    stages = channel_stages(config, channel)
    messages = split_messages(data)
    if not messages:
        raise ConversionFailed("no HL7 message found in the input (no line starting with MSH)")
    for index, raw in enumerate(messages, start=1):
        yield run_stages(stages, channel, raw, index)


def run_samples(config: EngineConfig, channel_name: str | None, out: Callable[[str], None]) -> int:
    """Runs channels/<name>/samples/*.hl7 against *.expected.json; returns the failure count."""
    from channels.testing import subset_diff

    failures = 0
    total = 0
    channels = [find_channel(config, channel_name)] if channel_name else list(config.channels)
    for channel in channels:
        samples_dir = channel.samples_dir
        if samples_dir is None or not samples_dir.is_dir():
            out(f"{channel.name}: no samples directory")
            continue
        stages = channel_stages(config, channel)
        for sample in sorted(samples_dir.glob("*.hl7")):
            expected_path = sample.with_suffix(".expected.json")
            if not expected_path.exists():
                continue
            total += 1
            expected = json.loads(expected_path.read_text(encoding="utf-8"))
            try:
                result = run_stages(stages, channel, sample.read_bytes())
            except ConversionFailed as exc:
                failures += 1
                out(f"FAIL {channel.name}/{sample.name}: {exc}")
                continue
            diffs = subset_diff(expected, result.output)
            if diffs:
                failures += 1
                out(f"FAIL {channel.name}/{sample.name}:")
                for line in diffs:
                    out(f"    {line}")
            else:
                out(f"ok   {channel.name}/{sample.name}")
    out(f"{total - failures} passed, {failures} failed")
    return failures


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.hl7"))
