"""Durable inbox implementations (DESIGN.md §1-2): SQLite by default."""

from engine.store.sqlite import SQLiteStore
from engine.types import QuarantinedFrame

__all__ = ["QuarantinedFrame", "SQLiteStore"]
