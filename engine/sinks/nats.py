"""`type: nats` — publish the FHIR output to NATS JetStream, acknowledged and deduplicated.

Each broker message (engine/sinks/payload.py: the Bundle, or each resource) is published
with JetStream's acknowledged publish: the sink counts a message delivered only when the
stream has stored it. Each carries `Nats-Msg-Id` = its deterministic id
(`<channel>:<message id>[:<entry index>]`), so when the runner hands a message again (a
crash between publish and the store update, a retry after an ambiguous timeout, or a
message whose third resource failed after two were stored) the stream drops the copies
it saw within its duplicate window and answers `duplicate: true`. Past that window a
redelivery is stored twice; the ids in the headers let consumers drop it.

Subjects come from a template with a fixed set of placeholders, all chosen by the engine
or the message header, never PHI: {channel} {sink} {message_code} (MSH-9.1)
{trigger_event} (MSH-9.2) {message_type} (MSH-9.1_MSH-9.2) {resource_type}. Values are
reduced to letters, digits, '_' and '-', so a value can never add a subject token or a
wildcard.

Reconnecting is the runner's job, not the client's: the client is built without
background reconnects, so a broken connection fails the publish at once (transient),
and the next attempt, after the channel's backoff, connects anew.

This module is the config, the subjects and the factory; the sink is in
engine/sinks/nats_client.py, imported only when a nats sink is built.
"""

from __future__ import annotations

import importlib.util
import re
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.models import SecretRef
from engine.registry import BuildContext, Registry
from engine.sinks.payload import PayloadMode
from engine.types import ConfigError, Exchange

if TYPE_CHECKING:
    from engine.sinks.nats_client import NatsSink

#: Placeholders a subject template may use (module docstring).
PLACEHOLDERS = frozenset({"channel", "sink", "message_code", "trigger_event", "message_type", "resource_type"})
DEFAULT_SUBJECT = "hl7.{channel}.{message_type}"

_TOKEN = re.compile(r"[^\s.*>]+")  # a literal subject token: no blanks, dots or wildcards
_COMPONENTS = re.compile(r"[^A-Za-z0-9]")
_UNSAFE_VALUE = re.compile(r"[^A-Za-z0-9_-]")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_MAX_VALUE_LENGTH = 64
_SCHEMES = frozenset({"nats", "tls"})


# ---------------------------------------------------------------- subjects


def subject_value(value: str) -> str:
    """A placeholder value made safe as (part of) one subject token."""
    return _UNSAFE_VALUE.sub("_", value)[:_MAX_VALUE_LENGTH] or "_"


class SubjectTemplate:
    """A compiled subject template: literal parts and placeholders, checked once."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if field is not None and (field not in PLACEHOLDERS or spec or conversion):
                raise ValueError(
                    f"subject placeholder {{{field}}} is not allowed; use {', '.join(sorted(PLACEHOLDERS))}"
                )
            self._parts.append((literal, field))
        sample = self.render(dict.fromkeys(PLACEHOLDERS, "x"))
        if not all(_TOKEN.fullmatch(token) for token in sample.split(".")):
            raise ValueError("a subject is dot-separated tokens without blanks or wildcards ('*', '>'), "
                             "e.g. hl7.{channel}.{message_type}")

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(literal + (subject_value(values[field]) if field else "") for literal, field in self._parts)

    def wildcard(self) -> str:
        """The subject filter covering every rendering: a token with a placeholder becomes '*'."""
        tokens = "".join(literal + ("\x00" if field else "") for literal, field in self._parts).split(".")
        return ".".join("*" if "\x00" in token else token for token in tokens)


def subject_values(exchange: Exchange, sink: str, resource_type: str) -> dict[str, str]:
    """Placeholder values for one broker message (MSH-9 components, names, a type).

    MSH-9 comes from the store's copy (`message_type`): its component separator is not
    known there, but it is never a letter or digit, and neither MSH-9.1 nor MSH-9.2 holds
    anything else (HL7 tables 0076 and 0003).
    """
    parts = _COMPONENTS.split(exchange.message.message_type, 2)
    code = parts[0]
    event = parts[1] if len(parts) > 1 else ""
    return {
        "channel": exchange.message.channel,
        "sink": sink,
        "message_code": code,
        "trigger_event": event,
        "message_type": f"{code}_{event}" if event else code,
        "resource_type": resource_type,
    }


# ---------------------------------------------------------------- config


class NatsSinkConfig(BaseModel):
    """Publish each message's FHIR output to a NATS JetStream stream (acked, deduplicated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["nats"]
    servers: tuple[str, ...] = Field(default=("nats://127.0.0.1:4222",), min_length=1,
                                     description="Server URLs, nats:// or tls://.")
    subject: str = Field(default=DEFAULT_SUBJECT, description="Subject template; placeholders: "
                         + ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS)) + " (never PHI).")
    stream: str | None = Field(default=None, description="JetStream stream expected to store the messages "
                               "(a publish landing in another stream fails).")
    create_stream: bool = Field(default=False, description="Create `stream` at start when missing, "
                                "capturing the subject template's wildcard.")
    duplicate_window_s: float = Field(default=600.0, gt=0, description="Duplicate window of a stream this "
                                      "sink creates: redeliveries within it are dropped by the server.")
    payload: PayloadMode = Field(default="bundle", description="bundle: one message per Bundle. resources: "
                                 "one message per resource.")
    credentials: SecretRef | None = Field(default=None, description="NATS user credentials (.creds content: "
                                          "user JWT and NKey seed); needs the nkeys package.")
    token: SecretRef | None = Field(default=None, description="Authentication token.")
    user: str | None = Field(default=None, description="User name (with `password`).")
    password: SecretRef | None = Field(default=None, description="Password of `user`.")
    timeout_s: float = Field(default=10.0, gt=0, description="Seconds to connect, and to wait for each "
                             "publish acknowledgement.")
    name: str | None = Field(default=None, description="Sink name for metrics and the store; default 'nats'.")

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in _SCHEMES or not parts.hostname:
                raise ValueError("each server must be a URL such as nats://127.0.0.1:4222 or tls://host:4222")
            if parts.username or parts.password:
                raise ValueError("put no user or password in a server URL; use 'user'/'password' or 'token'")
        return value

    @field_validator("subject")
    @classmethod
    def _template(cls, value: str) -> str:
        SubjectTemplate(value)
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str | None) -> str | None:
        if value is not None and not _STREAM_NAME.fullmatch(value):
            raise ValueError("a stream name is 1-255 letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.create_stream and self.stream is None:
            raise ValueError("create_stream needs 'stream'")
        if (self.user is None) != (self.password is None):
            raise ValueError("give 'user' and 'password' together")
        if sum(x is not None for x in (self.credentials, self.token, self.user)) > 1:
            raise ValueError("choose one of 'credentials', 'token' or 'user'/'password'")
        return self


def _auth(config: NatsSinkConfig) -> dict[str, Any]:
    """Connect arguments for the configured authentication; secrets read now, never logged."""
    if config.credentials is not None:
        if importlib.util.find_spec("nkeys") is None:
            raise ConfigError(["sink nats: 'credentials' need the nkeys package (pip install 'nats-py[nkeys]')"])
        from nats.aio.client import RawCredentials  # built only for a config that uses nats

        return {"user_credentials": RawCredentials(config.credentials.reveal())}
    if config.token is not None:
        return {"token": config.token.reveal()}
    if config.user is not None and config.password is not None:
        return {"user": config.user, "password": config.password.reveal()}
    return {}


def _build(config: BaseModel, ctx: BuildContext) -> NatsSink:
    assert isinstance(config, NatsSinkConfig)
    from engine.sinks.nats_client import NatsSink  # nats-py only for a config that uses it

    return NatsSink(
        config.name or "nats",
        ctx.channel,
        list(config.servers),
        SubjectTemplate(config.subject),
        stream=config.stream,
        create_stream=config.create_stream,
        duplicate_window_s=config.duplicate_window_s,
        payload=config.payload,
        auth=_auth(config),
        timeout_s=config.timeout_s,
    )


def register(registry: Registry) -> None:
    registry.add_sink("nats", NatsSinkConfig, "Publish the FHIR output to NATS JetStream (acked, deduplicated).",
                      _build)

