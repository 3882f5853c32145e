"""The MLLP sink's config and its reading of ACKs (HL7 v2.5 ch. 2.14.8 MSA, 2.14.5 ERR)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.sinks.mllp import AckMismatchError, AckPolicy, MllpSinkConfig, judge_ack, read_ack
from engine.types import PermanentError, TransientError


def ack(code: str, control_id: str, *, err: str = "", msa_text: str = "", err_text: str = "",
        version: str = "2.5.1") -> bytes:
    """An ACK as a peer would write it; `err` fills ERR-3.1 (v2.5+) or ERR-1.4.1 (older)."""
    segments = [f"MSH|^~\\&|PEER|HUB|HL7ENGINE|GENHOSP|20260115083000||ACK^A01^ACK|ACK1|P|{version}",
                f"MSA|{code}|{control_id}" + (f"|{msa_text}" if msa_text else "")]
    if err and version.startswith(("2.3", "2.4")):
        segments.append(f"ERR|PID^1^3^{err}&{err_text}&HL70357")
    elif err:
        segments.append(f"ERR||PID^1^3|{err}^Error^HL70357|E||||{err_text}")
    return ("\r".join(segments) + "\r").encode()


class TestMllpSinkConfig:
    def test_defaults_forward_the_original_and_dead_letter_errors(self) -> None:
        """Only target is required; the defaults forward original bytes and dead-letter AE/AR."""
        config = MllpSinkConfig.model_validate({"type": "mllp", "target": "10.0.0.5:2575"})
        assert ("10.0.0.5", 2575) == (config.target.host, config.target.port)
        assert ("original", "dead", "dead") == (config.payload, config.on_ae, config.on_ar)
        assert ("207",) == config.retry_codes
        assert config.tls is None

    def test_unknown_key_is_an_error(self) -> None:
        """A misspelt key is refused, not ignored."""
        with pytest.raises(ValidationError, match="on_error"):
            MllpSinkConfig.model_validate({"type": "mllp", "target": "h:1", "on_error": "retry"})

    def test_policy_values_are_checked(self) -> None:
        """on_ae accepts only retry or dead."""
        with pytest.raises(ValidationError):
            MllpSinkConfig.model_validate({"type": "mllp", "target": "h:1", "on_ae": "ignore"})

    def test_tls_key_needs_a_certificate(self, tmp_path) -> None:
        """A client key without its certificate is a config error."""
        key = tmp_path / "client.key"
        key.write_text("x")
        with pytest.raises(ValidationError, match="needs 'cert'"):
            MllpSinkConfig.model_validate({"type": "mllp", "target": "h:1", "tls": {"key": str(key)}})


class TestReadAck:
    def test_reads_code_control_id_and_error_code(self) -> None:
        """MSA-1, MSA-2 and ERR-3.1 are read from a v2.5 ACK."""
        reading = read_ack(ack("AE", "C1", err="103"))
        assert reading is not None
        assert ("AE", "C1", "103") == (reading.code, reading.control_id, reading.error_code)

    def test_reads_the_v23_error_location_form(self) -> None:
        """Before v2.5 the code sits in ERR-1.4 (ELD), and is read from there."""
        reading = read_ack(ack("AR", "C1", err="207", version="2.3"))
        assert reading is not None
        assert "207" == reading.error_code

    def test_error_code_that_is_not_a_code_is_dropped(self) -> None:
        """An ERR-3 holding free text (it could be PHI) is not kept."""
        reading = read_ack(ack("AE", "C1", err="DOE JANE"))
        assert reading is not None
        assert "" == reading.error_code

    def test_no_msa_reads_as_none(self) -> None:
        """A frame without MSA is not an ACK."""
        assert read_ack(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|X|P|2.5.1\r") is None


class TestJudgeAck:
    policy = AckPolicy()

    @pytest.mark.parametrize("code", ["AA", "CA"])
    def test_accept_codes_are_done(self, code: str) -> None:
        """AA and CA echoing the control id mean the peer took the message."""
        judge_ack(ack(code, "C1"), "C1", self.policy)

    def test_ae_under_dead_is_permanent_with_the_error_code(self) -> None:
        """AE under the default policy dead-letters, naming MSA-1 and the ERR-3 code."""
        with pytest.raises(PermanentError) as caught:
            judge_ack(ack("AE", "C1", err="103"), "C1", self.policy)
        assert "mllp peer answered AE (ERR-3 103)" == str(caught.value)

    def test_ae_under_retry_is_transient_and_not_ambiguous(self) -> None:
        """AE under on_ae=retry is retried; the peer answered, so nothing is ambiguous."""
        with pytest.raises(TransientError) as caught:
            judge_ack(ack("AE", "C1"), "C1", AckPolicy(on_ae="retry"))
        assert not caught.value.ambiguous
        assert not isinstance(caught.value, AckMismatchError)

    def test_ar_follows_on_ar(self) -> None:
        """AR is permanent under on_ar=dead and transient under on_ar=retry."""
        with pytest.raises(PermanentError):
            judge_ack(ack("AR", "C1", err="200"), "C1", self.policy)
        with pytest.raises(TransientError):
            judge_ack(ack("CR", "C1", err="200"), "C1", AckPolicy(on_ar="retry"))

    def test_retry_codes_win_over_dead(self) -> None:
        """AR with ERR-3 207 (the peer's store is down) is retried even under on_ar=dead."""
        with pytest.raises(TransientError):
            judge_ack(ack("AR", "C1", err="207"), "C1", self.policy)

    def test_ack_for_another_message_is_a_mismatch(self) -> None:
        """MSA-2 naming another control id never credits this message."""
        with pytest.raises(AckMismatchError) as caught:
            judge_ack(ack("AA", "OTHER"), "C1", self.policy)
        assert caught.value.ambiguous

    @pytest.mark.parametrize("answer", [b"garbage", ack("XX", "C1")])
    def test_unreadable_answers_are_mismatches(self, answer: bytes) -> None:
        """No MSA, or an MSA-1 outside table 0008, is treated like a mismatch."""
        with pytest.raises(AckMismatchError):
            judge_ack(answer, "C1", self.policy)

    def test_reason_never_quotes_ack_texts(self) -> None:
        """MSA-3 and ERR-8 may quote the message: the reason carries neither."""
        answer = ack("AE", "C1", err="103", msa_text="DOE JANE MRN12345", err_text="PID-3 MRN12345 unknown")
        with pytest.raises(PermanentError) as caught:
            judge_ack(answer, "C1", self.policy)
        assert "MRN12345" not in str(caught.value)
        assert "DOE" not in str(caught.value)
