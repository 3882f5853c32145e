"""`type: kafka` — publish the FHIR output to a Kafka topic (aiokafka, acks=all).

Each broker message (engine/sinks/payload.py: the Bundle, or each resource) becomes one
record. A message counts as delivered when every in-sync replica has it (`acks: all`).

Key and order: with `key: patient` every record of one patient carries the same key,
so Kafka puts them in one partition, in the order the runner hands them over (the store
already keeps per-patient order). The key is never the identifier itself: it is the
channel's ordering key (a hash made at intake, engine/pipeline/intake.py) or, when the
channel has none, a SHA-256 of PID-3.1 and PID-3.4; with `key_secret` it is an HMAC
under that secret instead, so nobody can confirm a guessed MRN against the topic.

Duplicates: the idempotent producer is off (Tansu, the broker the tests run, does not
support it, and it would only cover the producer's own retries anyway, not the runner
handing a message again after a crash). So a record may be written more than once; each
carries its deterministic id in the `Hl7-Message-Id` header (`<channel>:<message
id>[:<entry index>]`) and the same key, and consumers drop ids they have seen (a
compacted topic or an upsert by id does that for free). The Bundles themselves are
idempotent (conditional creates/updates), so replaying one twice changes nothing.

A batch is pipelined: every record is handed to the producer first, then the results
are awaited in order. aiokafka sends one request per broker connection at a time, so a
partition's records stay in order; after the first transient failure the remaining
exchanges are reported NOT_ATTEMPTED (some of them may have been written: duplicates,
handled as above).

This module is the config, the key and the factory; the producer is in
engine/sinks/kafka_client.py, imported only when a kafka sink is built.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config.models import HostPort, SecretRef
from engine.hl7.fields import field_value
from engine.registry import BuildContext, Registry
from engine.sinks.mllp import ClientTlsConfig
from engine.sinks.payload import PayloadMode
from engine.types import Exchange

if TYPE_CHECKING:
    from engine.sinks.kafka_client import KafkaSink

KeyMode = Literal["patient", "message", "none"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class KafkaSaslConfig(BaseModel):
    """SASL authentication (over TLS when the sink has `tls`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str
    password: SecretRef


class KafkaSinkConfig(BaseModel):
    """Publish each message's FHIR output to a Kafka topic, keyed by patient."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["kafka"]
    bootstrap_servers: tuple[HostPort, ...] = Field(min_length=1, description="Brokers to bootstrap from, "
                                                    "host:port each (a comma-separated string is accepted).")
    topic: str = Field(description="Topic to write to.")
    key: KeyMode = Field(default="patient", description="patient: a hash of the patient (per-patient order); "
                         "message: the message id; none: no key (records spread over partitions).")
    key_secret: SecretRef | None = Field(default=None, description="Make patient keys an HMAC under this secret.")
    acks: Literal["all"] = Field(default="all", description="Only 'all': a record counts when every in-sync "
                                 "replica has it.")
    payload: PayloadMode = Field(default="bundle", description="bundle: one record per Bundle. resources: one "
                                 "record per resource.")
    client_id: str = Field(default="hl7engine", description="Kafka client id (shown in broker logs and quotas).")
    sasl: KafkaSaslConfig | None = Field(default=None, description="SASL authentication; omit for none.")
    tls: ClientTlsConfig | None = Field(default=None, description="Connect with TLS; omit for plain TCP.")
    timeout_s: float = Field(default=30.0, gt=0, description="Seconds a record may wait for its acknowledgement.")
    name: str | None = Field(default=None, description="Sink name for metrics and the store; default 'kafka'.")

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError("a topic name is 1-249 letters, digits, '.', '_' or '-'")
        return value


def patient_key(exchange: Exchange, secret: bytes | None = None) -> bytes | None:
    """A key naming the patient without revealing the identifier (module docstring), or
    None when the message names no patient (its records then spread over partitions)."""
    base = exchange.message.ordering_key
    if not base:
        text = exchange.text or exchange.message.text()  # the runner leaves `text` empty
        identifier = field_value(text, "PID-3.1")
        if identifier is None:
            return None
        authority = field_value(text, "PID-3.4") or ""
        base = hashlib.sha256(f"{identifier}^{authority}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    if secret is not None:
        return hmac.new(secret, base.encode(), hashlib.sha256).hexdigest()[:32].encode()
    return base.encode()


def producer_options(config: KafkaSinkConfig) -> dict[str, Any]:
    """aiokafka producer arguments; secrets are read here, at start, and never logged."""
    timeout_ms = int(config.timeout_s * 1000)
    options: dict[str, Any] = {
        "bootstrap_servers": [str(server) for server in config.bootstrap_servers],
        "client_id": config.client_id,
        "acks": "all",
        "enable_idempotence": False,  # module docstring: duplicates are handled by id and key
        "request_timeout_ms": timeout_ms,
        "retry_backoff_ms": 200,
    }
    if config.tls is not None:
        options["ssl_context"] = config.tls.context()
    if config.sasl is not None:
        options["security_protocol"] = "SASL_SSL" if config.tls is not None else "SASL_PLAINTEXT"
        options["sasl_mechanism"] = config.sasl.mechanism
        options["sasl_plain_username"] = config.sasl.username
        options["sasl_plain_password"] = config.sasl.password.reveal()
    elif config.tls is not None:
        options["security_protocol"] = "SSL"
    return options


def _build(config: BaseModel, ctx: BuildContext) -> KafkaSink:
    assert isinstance(config, KafkaSinkConfig)
    from engine.sinks.kafka_client import KafkaSink  # aiokafka only for a config that uses it

    return KafkaSink(
        config.name or "kafka",
        ctx.channel,
        config.topic,
        producer_options(config),
        key=config.key,
        key_secret=config.key_secret.reveal().encode() if config.key_secret is not None else None,
        payload=config.payload,
    )


def register(registry: Registry) -> None:
    registry.add_sink("kafka", KafkaSinkConfig, "Publish the FHIR output to a Kafka topic, keyed by patient.",
                      _build)
