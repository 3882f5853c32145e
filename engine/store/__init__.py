"""Durable inbox implementations (DESIGN.md §1-2): SQLite by default."""

from engine.store.base import QuarantinedFrame
from engine.store.sqlite import SQLiteStore

__all__ = ["QuarantinedFrame", "SQLiteStore"]
