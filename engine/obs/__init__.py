"""Observability: structured logging with PHI redaction, metrics, readiness checks.

- logging.py: configure_logging, per-message context, the audit logger
- redact.py: the PHI safety net for log lines and message masking for operators
- metrics.py: every Prometheus metric the engine exports
- health.py: named readiness checks behind /readyz and hl7engine_ready
"""
