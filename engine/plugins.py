"""Registers the built-in stages and sinks with a registry."""

from __future__ import annotations

from engine.registry import Registry


def register_stages(registry: Registry) -> None:
    """The built-in stages: all a stage worker process needs (no sink libraries loaded)."""
    from engine.pipeline import stages

    stages.register(registry)


def register_sinks(registry: Registry) -> None:
    """The built-in sinks: config models and factories.

    Every process that validates a config imports these modules, so none of them may
    import a client library (aiokafka, nats-py, httpx) at module level: each factory
    imports its `<sink>_client` module when a channel uses the sink
    (tests/unit/test_lazy_imports.py).
    """
    from engine.sinks import fhir_http, file, kafka, mllp, nats

    for module in (file, fhir_http, mllp, nats, kafka):
        module.register(registry)


def register_builtins(registry: Registry) -> None:
    """Add every stage and sink shipped with the engine."""
    register_stages(registry)
    register_sinks(registry)
