"""Logging: JSON lines, per-message context, and the PHI safety net (DESIGN.md §5.7)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from engine.obs.logging import (
    audit_logger,
    bind_message_context,
    clear_message_context,
    configure_logging,
    message_context,
)
from engine.obs.redact import REDACTED, RedactPHI, looks_like_hl7, mask_message, summarize_exception

CANARY = "ZZCANARYNAME"
HL7 = f"MSH|^~\\&|APP|FAC|ENG|HUB|20260101||ADT^A01|C1|P|2.5\rPID|1||MRN1^^^H^MR||{CANARY}^JOHN||19700101|M\r"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog and the stdlib root logger back as they were after each test."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()


def configured(level: str = "info", log_content: bool = False) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level=level, fmt="json", stream=stream, log_content=log_content, cache_loggers=False)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def raise_with_canary() -> None:
    raise ValueError(f"cannot parse PID-5 value {CANARY}")


class TestLooksLikeHl7:
    @pytest.mark.parametrize("text", [
        HL7,
        "PID|1||123",
        "near \rOBX|1|TX|",
        "encoding ^~\\& seen",
        "field |DOE^JOHN| here",
    ])
    def test_hl7_shapes_detected(self, text: str) -> None:
        """Segments, encoding characters and component-bearing fields count as HL7 content."""
        assert looks_like_hl7(text)

    @pytest.mark.parametrize("text", [
        "message_dead_lettered", "stage v2_to_fhir: PID-5: empty", "AA|AE", "http://fhir/Patient/1",
    ])
    def test_plain_text_passes(self, text: str) -> None:
        """Ordinary log text with field names (PID-5) is not mistaken for content."""
        assert not looks_like_hl7(text)


class TestRedactPHI:
    def run(self, log_content: bool = False, **event: Any) -> dict[str, Any]:
        result: dict[str, Any] = RedactPHI(log_content=log_content)(None, "info", {"event": "e", **event})
        return result

    def test_deny_listed_keys_redacted(self) -> None:
        """Keys naming content are replaced whatever their value."""
        out = self.run(name=CANARY, patient_name=CANARY, raw=b"x", payload="y", dob="19700101", mrn="1")
        redacted = {k for k, v in out.items() if v == REDACTED}
        assert redacted == {"name", "patient_name", "raw", "payload", "dob", "mrn"}

    def test_allowed_keys_kept(self) -> None:
        """Engine identifiers stay readable."""
        fields: dict[str, Any] = {
            "channel": "adt", "message_id": 7, "reason": "no_msh", "error_type": "ValueError",
            "code": "AR", "segment_id": "PID", "field": "PID-5", "sink_name": "file",
        }
        out = self.run(**fields)
        assert {"event": "e", **fields} == out

    def test_hl7_looking_values_redacted_under_any_key(self) -> None:
        """A string shaped like HL7 is replaced even under an innocent key, including the event."""
        out = RedactPHI()(None, "info", {"event": f"got {HL7}", "note": "PID|1||X", "ok": "fine"})
        assert out == {"event": REDACTED, "note": REDACTED, "ok": "fine"}

    def test_nested_structures_cleaned(self) -> None:
        """Lists and dicts are walked: deny-listed keys and HL7 strings inside them are replaced."""
        out = self.run(extra={"name": CANARY, "count": 2, "items": ["ok", "PID|1|"]})
        assert out["extra"] == {"name": REDACTED, "count": 2, "items": ["ok", REDACTED]}

    def test_unknown_objects_shown_by_type(self) -> None:
        """An object whose repr could hold content is rendered as its type name."""

        class Holder:
            def __repr__(self) -> str:
                return CANARY

        assert self.run(obj=Holder())["obj"] == "<Holder>"

    def test_exception_values_lose_their_message(self) -> None:
        """An exception passed as a value keeps its type only."""
        assert f"ValueError: {REDACTED}" == self.run(err=ValueError(CANARY))["err"]

    def test_exc_info_rendered_without_message(self) -> None:
        """A traceback keeps types and module:line locations but never the exception text."""
        try:
            raise_with_canary()
        except ValueError as exc:
            out = self.run(exc_info=exc)
        assert CANARY not in out["exception"]
        assert "builtins.ValueError" in out["exception"]
        assert "tests.unit.test_logging:" in out["exception"]
        assert "exc_info" not in out

    def test_exception_text_scrubbed_elsewhere(self) -> None:
        """Text that repeats the exception (an asyncio Task repr) is scrubbed from other values."""
        exc = ValueError(CANARY)
        out = self.run(exc_info=exc, event=f"Task exception=ValueError('{CANARY}') never retrieved")
        assert CANARY not in json.dumps(out)

    def test_content_logging_passes_values(self) -> None:
        """With log_content on, values and exception messages are kept (logs contain PHI)."""
        try:
            raise_with_canary()
        except ValueError as exc:
            out = self.run(log_content=True, name=CANARY, exc_info=exc)
        assert out["name"] == CANARY
        assert CANARY in out["exception"]

    def test_summary_includes_causes(self) -> None:
        """A chained exception lists every type in the chain, none of the messages."""
        try:
            try:
                raise_with_canary()
            except ValueError as inner:
                raise KeyError(CANARY) from inner
        except KeyError as exc:
            summary = summarize_exception(exc)
        assert "builtins.ValueError" in summary and "builtins.KeyError" in summary
        assert CANARY not in summary


class TestCaptureLogs:
    def test_redactor_in_capture_chain(self) -> None:
        """Under capture_logs with the redactor, canaries in kwargs and exceptions never surface."""
        log = structlog.get_logger("hl7engine.test")
        with capture_logs(processors=[RedactPHI()]) as captured:
            log.warning("mapping_failed", channel="adt", message_id=3, patient=CANARY, text=HL7)
            try:
                raise_with_canary()
            except ValueError:
                log.exception("stage_failed", channel="adt", error_type="ValueError")
        assert CANARY not in repr(captured)
        assert captured[0] == {"event": "mapping_failed", "channel": "adt", "message_id": 3,
                               "patient": REDACTED, "text": REDACTED, "log_level": "warning"}
        assert "builtins.ValueError" in captured[1]["exception"]

    def test_message_context_bound(self) -> None:
        """bind_message_context adds channel, message id and control id to later events."""
        log = structlog.get_logger("hl7engine.test")
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
            bind_message_context("adt", 42, "CTRL9")
            log.info("inside")
            clear_message_context()
            log.info("outside")
        assert {"channel": "adt", "message_id": 42, "control_id": "CTRL9"}.items() <= captured[0].items()
        assert "channel" not in captured[1]


class TestJsonOutput:
    def test_line_shape(self) -> None:
        """Each line is JSON with an ISO UTC timestamp, level, event and logger name."""
        stream = configured()
        structlog.get_logger("hl7engine.runner").info("message_retry", channel="adt", attempts=2)
        (line,) = lines(stream)
        assert {"event": "message_retry", "level": "info", "logger": "hl7engine.runner", "channel": "adt",
                "attempts": 2}.items() <= line.items()
        assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]

    def test_disabled_level_writes_nothing(self) -> None:
        """Below the configured level nothing is rendered."""
        stream = configured(level="warning")
        structlog.get_logger("x").info("hidden")
        structlog.get_logger("x").warning("shown")
        assert [line["event"] for line in lines(stream)] == ["shown"]

    def test_unknown_level_rejected(self) -> None:
        """A typo in the level is an error, not silently info."""
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging(level="verbose", stream=io.StringIO())

    def test_canaries_never_reach_output(self) -> None:
        """Canary PHI in kwargs, exception messages and stdlib calls never appears in the stream."""
        stream = configured()
        log = structlog.get_logger("hl7engine.test")
        log.info("received", channel="adt", message_id=1, name=CANARY, raw=HL7.encode(), note=HL7)
        try:
            raise_with_canary()
        except ValueError:
            log.exception("stage_failed", channel="adt")
            logging.getLogger("asyncio").exception("callback failed")
        url = f"http://fhir/Patient?name={CANARY}"
        logging.getLogger("httpx").info('HTTP Request: GET %s "%s"', url, 200)
        logging.getLogger("aiohttp.server").warning(f"bad line {HL7}")
        output = stream.getvalue()
        assert CANARY not in output
        records = lines(stream)
        assert len(records) == 5
        assert {"channel": "adt", "message_id": 1, "name": REDACTED}.items() <= records[0].items()
        assert "builtins.ValueError" in records[1]["exception"]
        assert {"logger": "asyncio", "level": "error"}.items() <= records[2].items()
        assert records[3]["event"] == 'HTTP Request: GET %s "%s"'

    def test_context_in_stdlib_lines(self) -> None:
        """Per-message context also appears on stdlib records logged inside it."""
        stream = configured()
        with message_context("adt", 5):
            logging.getLogger("httpx").warning("retrying")
        logging.getLogger("httpx").warning("after")
        first, second = lines(stream)
        assert {"channel": "adt", "message_id": 5}.items() <= first.items()
        assert "channel" not in second

    async def test_context_isolated_between_tasks(self) -> None:
        """Each asyncio task sees only its own message context."""
        stream = configured()
        log = structlog.get_logger("hl7engine.test")
        started = asyncio.Event()
        release = asyncio.Event()

        async def work(channel: str, message_id: int) -> None:
            with message_context(channel, message_id):
                if message_id == 1:
                    started.set()
                    await release.wait()
                else:
                    await started.wait()
                    release.set()
                log.info("step")

        await asyncio.wait_for(asyncio.gather(work("a", 1), work("b", 2)), timeout=5)
        pairs = sorted((line["channel"], line["message_id"]) for line in lines(stream))
        assert pairs == [("a", 1), ("b", 2)]

    def test_content_logging_warns_and_keeps_values(self) -> None:
        """Opting in to content logging says so at startup and then keeps values."""
        stream = configured(log_content=True)
        structlog.get_logger("x").info("received", name=CANARY)
        first, second = lines(stream)
        assert {"event": "content_logging_enabled", "level": "warning"}.items() <= first.items()
        assert "PHI" in first["reason"]
        assert second["name"] == CANARY

    def test_audit_logger_ignores_level(self) -> None:
        """Audit lines are written even when the level would hide info lines."""
        stream = configured(level="error")
        audit_logger().info("message_content_viewed", message_id=1)
        written = [(line["event"], line["logger"]) for line in lines(stream)]
        assert written == [("message_content_viewed", "hl7engine.audit")]

    def test_console_format_redacts(self) -> None:
        """The console renderer gets the same redaction."""
        stream = io.StringIO()
        configure_logging(fmt="console", stream=stream, cache_loggers=False)
        structlog.get_logger("x").info("received", name=CANARY, channel="adt")
        assert CANARY not in stream.getvalue() and "adt" in stream.getvalue()


class TestMaskMessage:
    def test_structure_kept_values_masked(self) -> None:
        """MSH stays whole; other segments keep ids and separators, values become ***."""
        masked = mask_message(HL7)
        msh, pid, tail = masked.split("\r")
        assert HL7.split("\r", maxsplit=1)[0] == msh
        assert pid == "PID|***||***||***||***|***"
        assert tail == ""
        assert CANARY not in masked

    def test_terminators_preserved(self) -> None:
        """LF and CRLF terminated messages keep their terminators."""
        text = HL7.replace("\r", "\r\n")
        assert mask_message(text).count("\r\n") == 2

    def test_non_segment_lines_masked_whole(self) -> None:
        """A line that is not a segment (garbage, a quarantined frame) is masked entirely."""
        assert mask_message(f"{CANARY} free text\rpid|1|x") == "***\r***"

    def test_corpus_messages_never_leak_pid_names(self) -> None:
        """Masking a real message hides every PID field value (HL7 v2 ch. 3 PID-5)."""
        corpus = (Path(__file__).parents[2] / ".." / "shared" / "corpus").resolve()
        if not corpus.is_dir():
            if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
                pytest.fail(f"corpus missing at {corpus}")
            pytest.skip("shared corpus not present (../shared/corpus)")
        samples = sorted(p for p in corpus.rglob("*.hl7") if p.is_file())[:20]
        if not samples:
            pytest.skip("no .hl7 files in the corpus")
        for sample in samples:
            text = sample.read_text(encoding="latin-1")
            for line in mask_message(text).replace("\n", "\r").split("\r"):
                if line.startswith("PID"):
                    assert set(line[4:].split(line[3])) <= {"", "***"}
