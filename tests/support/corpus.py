"""Where the third-party corpus is, and what a test does when it is not there.

The corpus lives beside the repository (`../shared/corpus`) on the project's machines and
in CI; a user's clone has none. Tests skip with the reason then, and fail instead when
HL7ENGINE_REQUIRE_SERVICES=1 (CI), so a missing corpus can never pass silently.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

CORPUS = Path(os.environ.get("HL7ENGINE_CORPUS") or Path(__file__).parents[2] / ".." / "shared" / "corpus").resolve()


def require(path: Path) -> Path:
    """`path` inside the corpus, or skip/fail the calling test when it is absent."""
    if not path.exists():
        if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"third-party corpus required but missing: {path}")
        pytest.skip(f"third-party corpus not found at {CORPUS} (a user's clone)")
    return path


def corpus_rows() -> list[dict[str, str]]:
    """INDEX.csv rows (one per corpus message)."""
    with require(CORPUS / "INDEX.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
