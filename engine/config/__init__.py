"""Configuration: typed models, a YAML loader that reports file:line:col, and `validate`.

    from engine.config import load_config
    config = load_config("config/engine.yaml")          # raises engine.types.ConfigError

Plugins (stages, sinks) declare their own pydantic models and may use `SecretRef`,
`InputFile`, `OutputFile` and `HostPort` from here so the loader and `validate`
treat their fields like the engine's own.
"""

from engine.config.loader import LoadResult, load, load_config, parse_config
from engine.config.models import (
    AcceptConfig,
    AdminConfig,
    ChannelConfig,
    EngineConfig,
    HostPort,
    InputFile,
    LimitsConfig,
    LoggingConfig,
    OrderingConfig,
    OutputFile,
    RetryPolicy,
    SecretRef,
    StoreConfig,
    TlsConfig,
)
from engine.config.validate import EX_CONFIG, ValidationReport, main_validate, validate_config
from engine.config.yamlpos import Finding, Position

__all__ = [
    "EX_CONFIG",
    "AcceptConfig",
    "AdminConfig",
    "ChannelConfig",
    "EngineConfig",
    "Finding",
    "HostPort",
    "InputFile",
    "LimitsConfig",
    "LoadResult",
    "LoggingConfig",
    "OrderingConfig",
    "OutputFile",
    "Position",
    "RetryPolicy",
    "SecretRef",
    "StoreConfig",
    "TlsConfig",
    "ValidationReport",
    "load",
    "load_config",
    "main_validate",
    "parse_config",
    "validate_config",
]
