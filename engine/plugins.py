"""Registers the built-in stages and sinks with a registry."""

from __future__ import annotations

from engine.registry import Registry


def register_builtins(registry: Registry) -> None:
    """Add every stage and sink shipped with the engine."""
    from engine.pipeline import stages
    from engine.sinks import file

    stages.register(registry)
    file.register(registry)
    __import__("engine.sinks.fhir_http", fromlist=["register"]).register(registry)
    __import__("engine.sinks.mllp", fromlist=["register"]).register(registry)
    __import__("engine.sinks.nats", fromlist=["register"]).register(registry)
    __import__("engine.sinks.kafka", fromlist=["register"]).register(registry)
