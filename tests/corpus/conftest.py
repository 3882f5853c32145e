"""Fixtures for the corpus harness: where the corpus is, and one conversion pass per session.

The corpus (../shared/corpus beside the repository, or $HL7ENGINE_CORPUS) is third-party
data that a user's clone does not have: tests that need it skip with a reason, and fail
instead when HL7ENGINE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import harness


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    corpus = harness.locate_corpus()
    if corpus is None:
        reason = f"third-party corpus not found (../shared/corpus or ${harness.CORPUS_ENV})"
        if harness.services_required():
            pytest.fail(f"{reason}, and {harness.REQUIRE_ENV}=1")
        pytest.skip(reason)
    return corpus


@pytest.fixture(scope="session")
def corpus_run(corpus_dir: Path) -> harness.CorpusRun:
    """Every corpus message converted to R4B and scored against each source, once."""
    return harness.run_corpus(corpus_dir)


@pytest.fixture(scope="session")
def r5_conversions(corpus_run: harness.CorpusRun) -> dict[str, harness.Converted]:
    """Every corpus message converted to R5, once."""
    return harness.convert_all(corpus_run.messages, "R5")
