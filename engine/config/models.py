"""The configuration, as typed pydantic models (DESIGN.md §3).

Every model forbids unknown keys and is frozen: a loaded config is a value, shared by
the listener, intake and runner without copies or locks.

Stage and sink configs are plugins: their models live with the plugin and reach a
`ChannelConfig` already validated by the loader (engine/config/loader.py), so here
they are plain `BaseModel` instances.

Relative paths: fields typed `InputFile` / `OutputFile` are resolved, during
validation, against the `base_dir` in the validation context (the loader passes the
working directory) and become absolute. Without a context they stay as written, which
means the same thing: relative to the working directory.
"""

from __future__ import annotations

import codecs
import difflib
import enum
import fnmatch
import hashlib
import ipaddress
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    InstanceOf,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SerializationInfo,
    SerializeAsAny,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from engine.types import ConfigError

#: Validation-context keys the loader sets.
CTX_BASE_DIR = "base_dir"  # Path: relative paths resolve against it
CTX_TOPOLOGY_CHECKED = "topology_checked"  # bool: the loader already checked names and addresses

DEFAULT_STORE_PATH = "data/hl7engine.db"
INLINE_SECRET = "inline secret refused: use ${ENV_VAR}, {env: NAME} or {file: path}"  # noqa: S105 - a message

_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_NAME_RULE = "must be 1-64 lower-case letters, digits, '_' or '-', starting with a letter"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WHOLE_REF_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-[^}]*)?\}")
_MESSAGE_TYPE_RE = re.compile(r"\*|[A-Z][A-Z0-9]{2}(\^(\*|[A-Z0-9]{3}))?")
_VERSION_RE = re.compile(r"\*|[0-9]+(\.([0-9]+|\*)){0,2}")
_FIELD_REF_RE = re.compile(r"[A-Z][A-Z0-9]{2}-[1-9][0-9]*(\.[1-9][0-9]*){0,2}")


class _Model(BaseModel):
    """Base of every config model: unknown keys are errors; loaded configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _context(info: ValidationInfo | SerializationInfo) -> dict[str, Any]:
    ctx = info.context
    return ctx if isinstance(ctx, dict) else {}


# ---------------------------------------------------------------- paths


class PathRole(enum.Enum):
    """Marks a path field so `validate` knows what to check (Annotated metadata)."""

    INPUT = "input"  # must exist and be readable (TLS files, secret files)
    OUTPUT = "output"  # its directory must be writable or creatable (store, file sinks)


def _non_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("path must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = _context(info).get(CTX_BASE_DIR)
    if value.is_absolute() or not isinstance(base, Path):
        return value
    return base / value


def _serialize_path(value: Path, info: SerializationInfo) -> str:
    """JSON form; relative to `relative_to` when given, so hashes do not depend on the checkout's place."""
    base = _context(info).get("relative_to")
    if isinstance(base, Path) and value.is_relative_to(base):
        return value.relative_to(base).as_posix()
    return value.as_posix()


_PATH_SERIALIZER = PlainSerializer(_serialize_path, return_type=str, when_used="json")
#: A file the engine reads (TLS certificate, key, CA, secret file).
InputFile = Annotated[
    Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path), _PATH_SERIALIZER, PathRole.INPUT
]
#: A file the engine writes (SQLite database, file sink output); its directory may be created.
OutputFile = Annotated[
    Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path), _PATH_SERIALIZER, PathRole.OUTPUT
]


# ---------------------------------------------------------------- addresses


class HostPort(str):
    """A `host:port` listen or target address; IPv6 as `[::1]:2575`. Port 0 = any free port.

    It is the normalised `host:port` string itself (so code that treats `listen` as text
    keeps working) with `host` and `port` parsed once.
    """

    host: str
    port: int

    WILDCARDS = frozenset({"0.0.0.0", "::"})

    def __new__(cls, host: str, port: int) -> HostPort:
        obj = super().__new__(cls, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        obj.host = host
        obj.port = port
        return obj

    def __getnewargs__(self) -> tuple[str, int]:  # type: ignore[override]
        return (self.host, self.port)  # copy and pickle rebuild from the parts

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse `host:port`; errors name the rule, not the value."""
        text = text.strip()
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError("expected '[ipv6]:port', e.g. [::1]:2575")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError("invalid IPv6 address in brackets") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError("expected 'host:port', e.g. 127.0.0.1:2575")
            if ":" in host:
                raise ValueError("write IPv6 addresses in brackets, e.g. [::1]:2575")
            if not _is_ip(host) and not _HOSTNAME_RE.fullmatch(host):
                raise ValueError("invalid host name")
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            raise ValueError("port must be a number from 0 to 65535")
        return cls(host, int(port_text))

    @property
    def is_wildcard(self) -> bool:
        return self.host in self.WILDCARDS

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def overlaps(self, other: HostPort) -> bool:
        """Would binding both fail? Same port (not 0) and same host or either a wildcard."""
        if self.port == 0 or self.port != other.port:
            return False
        return self.host == other.host or self.is_wildcard or other.is_wildcard

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> HostPort:
            if isinstance(value, HostPort):
                return value
            if not isinstance(value, str):
                raise ValueError("expected 'host:port', e.g. 127.0.0.1:2575")
            return cls.parse(value)

        return core_schema.no_info_plain_validator_function(
            validate, serialization=core_schema.to_string_ser_schema()
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            # `${VAR}` / `${VAR:-default}` parts are interpolated at load time.
            "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|\$\{[^}]+\}):([0-9]{1,5}|\$\{[^}]+\})$|^\$\{[^}]+\}$",
            "examples": ["127.0.0.1:2575", "[::1]:2575", "${MLLP_HOST:-127.0.0.1}:2575"],
        }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a CIDR such as 10.0.0.0/8 or an address")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        raise ValueError("invalid CIDR (host bits must be zero, e.g. 10.0.0.0/8)") from None


Cidr = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(_parse_cidr),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10.0.0.0/8", "192.168.1.20"]}),
]


# ---------------------------------------------------------------- secrets


class SecretRef(_Model):
    """A secret by reference, never inline: `${NAME}`, `{env: NAME}` or `{file: path}`.

    The value is read when `reveal()` is called, so a rotated file is picked up and the
    secret never sits in the config object, its repr, its hash or a log line.
    """

    env: str | None = None
    """Name of the environment variable holding the secret."""
    file: InputFile | None = None
    """File holding the secret (a trailing newline is ignored)."""

    @model_validator(mode="before")
    @classmethod
    def _from_reference(cls, data: Any) -> Any:
        if isinstance(data, str):
            template = getattr(data, "template", None)  # set only for ${...} (yamlpos.Interpolated)
            if template is None:
                raise ValueError(INLINE_SECRET)
            match = _WHOLE_REF_RE.fullmatch(template.strip())
            if match is None:
                raise ValueError("a secret must be exactly one reference, e.g. ${FHIR_TOKEN}")
            if match.group("default") is not None:
                raise ValueError("a secret reference cannot carry an inline default")
            return {"env": match.group("name")}
        if isinstance(data, int | float | bool):
            raise ValueError(INLINE_SECRET)
        return data

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME_RE.fullmatch(value):
            raise ValueError("invalid environment variable name")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def reveal(self) -> str:
        """The secret itself. Raises ConfigError (naming the reference only) when absent."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([f"secret: environment variable {self.env} is not set"])
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError([f"secret: cannot read {self.file}: {reason}"]) from None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        as_object = handler(schema)
        as_string = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"}
        return {"anyOf": [as_string, as_object]}


#: Keys that always hold secrets; the loader refuses literal values under them even
#: when a plugin typed the field as a plain string.
SECRET_KEYS = frozenset({"password", "passwd", "secret", "client_secret", "token", "api_key", "apikey"})
SECRET_SUFFIXES = ("_password", "_secret", "_token")


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return key in SECRET_KEYS or key.endswith(SECRET_SUFFIXES)


# ---------------------------------------------------------------- engine sections


class RetentionConfig(_Model):
    """How long finished messages stay in the store. Unfinished and dead ones are never pruned."""

    done_days: float = Field(default=30.0, ge=0)
    """Prune done/filtered/released messages older than this many days."""
    prune_interval_s: float = Field(default=3600.0, gt=0)
    """Seconds between prune runs."""


class ChannelRetentionConfig(_Model):
    """A channel's own retention, overriding store.retention.done_days for its messages."""

    done_days: float = Field(ge=0)
    """Prune this channel's done/filtered/released messages older than this many days."""


class GroupCommitConfig(_Model):
    """Group commit: messages arriving together share one transaction and one fsync (DESIGN §7)."""

    max_batch: int = Field(default=512, ge=1, le=100_000)
    """At most this many messages per commit."""


class StoreConfig(_Model):
    """The durable inbox: SQLite (`path`, the default) or PostgreSQL (`url`); exactly one."""

    _POSTGRES_ONLY: ClassVar[frozenset[str]] = frozenset({"pool_min", "pool_max", "lease_timeout_s", "instance_id"})
    _URL_SECRET_PARAMS: ClassVar[frozenset[str]] = frozenset({"password", "sslpassword"})

    path: OutputFile | None = None
    """SQLite database file (default data/hl7engine.db, relative to the working directory)."""
    url: str | None = None
    """postgresql://user@host:5432/db; give the password as `password:` or ${ENV}, never inline."""
    password: SecretRef | None = None
    """PostgreSQL password by reference."""
    pool_min: int = Field(default=1, ge=0, le=100)
    """PostgreSQL: connections kept open."""
    pool_max: int = Field(default=10, ge=1, le=100)
    """PostgreSQL: at most this many connections per engine instance."""
    lease_timeout_s: float = Field(default=300.0, gt=0, le=86_400)
    """PostgreSQL: a dead instance's in-flight messages go to other instances after this long."""
    instance_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")
    """PostgreSQL: this instance's stable name in leases, distinct per instance, so a restart
    takes back its own in-flight messages at once (default: unique per process)."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    group_commit: GroupCommitConfig = Field(default_factory=GroupCommitConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("path") is None and data.get("url") is None:
            return {**data, "path": DEFAULT_STORE_PATH}
        return data

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("url must start with postgresql:// (use `path:` for SQLite)")
        # Look at the text as written: a password that came from ${ENV} is a reference.
        written = urlsplit(getattr(value, "template", value))
        if written.password and "${" not in written.password:
            raise ValueError("inline password in url refused: use `password: {env: NAME}` or ${ENV_VAR}")
        # libpq and asyncpg also read secrets from the query string (?password=...).
        from urllib.parse import parse_qsl

        for name, secret in parse_qsl(written.query, keep_blank_values=True):
            if name.lower() in cls._URL_SECRET_PARAMS and "${" not in secret:
                raise ValueError(f"inline {name.lower()} in url refused: use `password: {{env: NAME}}`")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> Self:
        if self.path is not None and self.url is not None:
            raise ValueError("give either 'path' (SQLite) or 'url' (PostgreSQL), not both")
        if self.password is not None and self.url is None:
            raise ValueError("'password' applies only to a PostgreSQL 'url'")
        postgres_only = sorted(self.model_fields_set & self._POSTGRES_ONLY)
        if postgres_only and self.url is None:
            raise ValueError(f"{', '.join(postgres_only)} apply only to a PostgreSQL 'url'")
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.path is not None else "postgresql"


AdminRole = Literal["viewer", "operator", "phi-reader"]


class AdminTokenConfig(_Model):
    """One operator API bearer token (by reference) and the roles it grants."""

    token: SecretRef
    roles: tuple[AdminRole, ...] = Field(min_length=1)
    """viewer (read queues), operator (+ replay/release), phi-reader (+ read message content, audited)."""

    @field_validator("roles", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):  # "operator,phi-reader", as the admin API writes roles
            return [r.strip() for r in value.replace("+", ",").split(",") if r.strip()]
        return value


class AdminConfig(_Model):
    """The admin HTTP server: /livez /readyz /metrics and the operator API."""

    listen: HostPort = HostPort("127.0.0.1", 8081)
    """host:port of the admin server; keep it on loopback or behind a proxy."""
    tokens: tuple[AdminTokenConfig, ...] = ()
    """Bearer tokens for the operator API, each with its roles; none = open API (loopback only!)."""

    def token_roles(self) -> dict[str, str]:
        """{token: "role,role"} for the admin server, reading each secret now."""
        return {t.token.reveal(): ",".join(t.roles) for t in self.tokens}


class LoggingConfig(_Model):
    """Structured logs (never message content: see DESIGN §5.7)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    log_content: bool = False
    """Log message field values. THESE LOGS CONTAIN PHI: off by default, for a debugging session only."""
    audit_file: OutputFile | None = None
    """Append-only, hash-chained audit trail of operator actions (content views, replays,
    releases, reloads); default: audit.log beside the SQLite store. Check it with
    `hl7engine audit verify`."""

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


_KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


class EncryptionConfig(_Model):
    """Encryption at rest of stored message bytes: AES-256-GCM, key id stored with each row.

    See docs/security.md (rotation: add a key, make it `active`, run `hl7engine keys rekey`,
    then remove the old one).
    """

    keys: dict[str, SecretRef] = Field(min_length=1)
    """Key id -> a 32-byte AES key, base64, by reference ({env: NAME} or {file: path}). Ids are
    stored with every row: never reuse an id for other key material."""
    active: str
    """Id of the key new rows are sealed with; the other keys only open older rows."""

    @field_validator("keys")
    @classmethod
    def _key_ids(cls, value: dict[str, SecretRef]) -> dict[str, SecretRef]:
        for key_id in value:
            if not _KEY_ID_RE.fullmatch(key_id):
                raise ValueError("key ids are 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _active_is_a_key(self) -> Self:
        if self.active not in self.keys:
            raise ValueError(f"active key {self.active!r} is not one of keys ({', '.join(sorted(self.keys))})")
        return self


# ---------------------------------------------------------------- channel sections


class TlsConfig(_Model):
    """TLS on the MLLP listener; mTLS when `require_client_cert`."""

    cert: InputFile
    """Server certificate chain (PEM)."""
    key: InputFile
    """Private key (PEM)."""
    key_password: SecretRef | None = None
    ca: InputFile | None = None
    """CA bundle that client certificates must chain to."""
    require_client_cert: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _mtls_needs_ca(self) -> Self:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs 'ca' to verify clients against")
        return self


class SenderBinding(_Model):
    """Binds a verified client certificate to the MSH-3 (and optionally MSH-4) it may send as.

    The certificate matches when every given attribute matches: subject CN, subject O, or
    a subjectAltName DNS entry. A value in `msh3`/`msh4` without a component separator is
    compared with the HD namespace id (MSH-3.1 / MSH-4.1); one with `^` with the whole
    field; `*` matches anything.
    """

    cn: str | None = None
    """Subject commonName, exact."""
    o: str | None = None
    """Subject organizationName, exact."""
    san_dns: str | None = None
    """A subjectAltName DNS name of the certificate (case-insensitive)."""
    msh3: tuple[str, ...] = Field(min_length=1)
    """Sending applications (MSH-3) this certificate may send as."""
    msh4: tuple[str, ...] | None = None
    """Sending facilities (MSH-4) it may send as; omit for any."""

    @model_validator(mode="after")
    def _identifies_a_certificate(self) -> Self:
        if self.cn is None and self.o is None and self.san_dns is None:
            raise ValueError("give at least one of 'cn', 'o' or 'san_dns' to match the client certificate")
        if any(not v for v in (self.cn, self.o, self.san_dns) if v is not None):
            raise ValueError("certificate attributes must not be empty")
        if any(not v for v in (*self.msh3, *(self.msh4 or ()))):
            raise ValueError("MSH-3/MSH-4 values must not be empty (use '*' for any)")
        if self.msh4 is not None and not self.msh4:
            raise ValueError("msh4 allows nothing; omit the key to allow any facility")
        return self


class AcceptConfig(_Model):
    """Which messages the channel takes; others get AR/CR with ERR-3 200-203 (HL7 v2 table 0357)."""

    message_types: tuple[str, ...] = ("*",)
    """MSH-9 patterns: 'ADT^A01', 'ADT^*' (or 'ADT'), '*'."""
    processing_ids: tuple[Literal["P", "T", "D"], ...] | None = None
    """MSH-11.1 values accepted (table 0103); omit for any."""
    versions: tuple[str, ...] | None = None
    """MSH-12 versions accepted, e.g. ['2.3', '2.5.1', '2.8.*']; omit for any."""

    @field_validator("message_types", mode="before")
    @classmethod
    def _upper_types(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(v.strip().upper() if isinstance(v, str) else v for v in value)
        return value

    @field_validator("message_types")
    @classmethod
    def _check_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("accepts nothing; omit the key to accept every message type")
        for pattern in value:
            if not _MESSAGE_TYPE_RE.fullmatch(pattern):
                raise ValueError(f"invalid message type pattern {pattern!r} (e.g. 'ADT^A01', 'ADT^*', '*')")
        return value

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_as_text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and any(isinstance(v, int | float) for v in value):
            raise ValueError("quote versions, e.g. '2.5' (YAML reads 2.5 as a number and 2.10 as 2.1)")
        return value

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("accepts nothing; omit the key to accept every version")
            for version in value:
                if not _VERSION_RE.fullmatch(version):
                    raise ValueError(f"invalid version pattern {version!r} (e.g. '2.5.1', '2.8.*')")
        return value

    @field_validator("processing_ids")
    @classmethod
    def _check_processing(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("accepts nothing; omit the key to accept every processing id")
        return value

    def rejection(
        self, message_code: str, trigger_event: str, processing_id: str, version_id: str
    ) -> int | None:
        """The HL7 v2 table 0357 error code for a message this channel refuses, else None.

        200 unsupported message type (MSH-9.1), 201 unsupported event code (MSH-9.2),
        202 unsupported processing id (MSH-11.1), 203 unsupported version id (MSH-12).
        """
        code_known = False
        type_ok = False
        for pattern in self.message_types:
            if pattern == "*":
                type_ok = True
                break
            code, _, trigger = pattern.partition("^")
            if code == message_code:
                code_known = True
                if trigger in ("", "*") or trigger == trigger_event:
                    type_ok = True
                    break
        if not type_ok:
            return 201 if code_known else 200
        if self.processing_ids is not None and processing_id.split("^", 1)[0] not in self.processing_ids:
            return 202
        if self.versions is not None and not any(fnmatch.fnmatchcase(version_id, v) for v in self.versions):
            return 203
        return None


class RateLimitConfig(_Model):
    """A token bucket: `per_second` tokens a second, at most `burst` saved up."""

    per_second: float = Field(gt=0, le=1_000_000)
    """Sustained rate."""
    burst: int | None = Field(default=None, ge=1, le=1_000_000)
    """Most taken at once after a quiet spell; default: per_second rounded up (at least 1)."""


class LimitsConfig(_Model):
    """Per-listener resource bounds (DESIGN §5.3)."""

    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest MLLP frame accepted; larger frames are dropped and counted."""
    frame_timeout_s: float = Field(default=30.0, gt=0)
    """A started frame must end within this many seconds."""
    idle_timeout_s: float | None = Field(default=3600.0, gt=0)
    """Close a connection silent for this long; null = never."""
    max_connections: int = Field(default=256, ge=1)
    max_connections_per_peer: int = Field(default=32, ge=1)
    peer_connection_rate: RateLimitConfig | None = None
    """New connections per second per peer address (token bucket). Over it a connection is
    closed at once, before any byte is read, and counted (refused_rate). Omit for no limit."""
    peer_message_rate: RateLimitConfig | None = None
    """Messages per second per peer address, across its connections. Over it the listener
    stops reading from that peer until the bucket refills (backpressure: every message
    still gets its ACK, later). Omit for no limit."""

    @model_validator(mode="after")
    def _peer_within_total(self) -> Self:
        if self.max_connections_per_peer > self.max_connections:
            raise ValueError("max_connections_per_peer cannot exceed max_connections")
        return self


class OrderingConfig(_Model):
    """Delivery order: per value of `key` (e.g. per patient), else one order for the channel."""

    key: str | None = None
    """HL7 field whose value keys the order, e.g. 'PID-3' or 'PID-3.1'."""

    @field_validator("key")
    @classmethod
    def _field_ref(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD_REF_RE.fullmatch(value):
            raise ValueError("expected a field reference such as 'PID-3' or 'PID-3.1'")
        return value


class RetryPolicy(_Model):
    """Exponential backoff for transient sink failures; after `max_attempts`, dead letter."""

    initial_s: float = Field(default=1.0, gt=0)
    max_s: float = Field(default=300.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, le=1)
    """Each delay is spread by +/- this fraction."""
    max_attempts: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_s < self.initial_s:
            raise ValueError("max_s cannot be below initial_s")
        return self

    def delay_s(self, attempt: int, unit_random: float = 0.5) -> float:
        """Seconds to wait before retry number `attempt` (1-based).

        initial_s * multiplier**(attempt-1), capped at max_s, then scaled by
        1 + jitter * (2*unit_random - 1); `unit_random` in [0, 1) comes from the caller.
        """
        base = self.initial_s
        if self.multiplier > 1 and attempt > 1:
            steps_to_cap = math.ceil(math.log(self.max_s / self.initial_s, self.multiplier))
            base = self.initial_s * self.multiplier ** min(attempt - 1, max(steps_to_cap, 0))
        base = min(base, self.max_s)
        return base * (1 + self.jitter * (2 * unit_random - 1))


#: A stage or sink config: the plugin's own model instance, validated by the loader.
PluginConfig = SerializeAsAny[InstanceOf[BaseModel]]


def plugin_type(config: BaseModel) -> str:
    """The `type` a plugin config was registered under."""
    value = getattr(config, "type", None)
    return value if isinstance(value, str) else type(config).__name__


def default_sink_names(types: Sequence[str], explicit: Sequence[str | None]) -> list[str]:
    """Each sink's name: its explicit `name`, else its type, or `<type>-<n>` when the type repeats."""
    totals: dict[str, int] = {}
    for t in types:
        totals[t] = totals.get(t, 0) + 1
    seen: dict[str, int] = {}
    names: list[str] = []
    for t, name in zip(types, explicit, strict=True):
        seen[t] = seen.get(t, 0) + 1
        names.append(name if name else (t if totals[t] == 1 else f"{t}-{seen[t]}"))
    return names


def _with_name(config: BaseModel, name: str) -> BaseModel:
    """The sink config with `name` filled in (plugins without a `name` field keep their type as name)."""
    if "name" in type(config).model_fields and getattr(config, "name", None) != name:
        return config.model_copy(update={"name": name})
    return config


def check_name(value: str, what: str) -> str | None:
    """Why `value` is not identifier-safe (used in metric labels and the store), or None."""
    return None if _NAME_RE.fullmatch(value) else f"{what} {_NAME_RULE}"


class ChannelConfig(_Model):
    """One channel: a listener, what it accepts, how it ACKs, its stages and its sinks."""

    name: str
    """Identifier-safe name (metric label, store key, `convert --channel`)."""
    enabled: bool = True
    listen: HostPort
    """MLLP listener host:port."""
    tls: TlsConfig | None = None
    ack: Literal["on_commit", "after_processing"] = "on_commit"
    """on_commit: AA once stored durably. after_processing: AA/AE after the stages ran (DESIGN §4)."""
    mllp_release: Literal[1, 2] = 1
    """MLLP release 1, or 2 (commit acknowledgement blocks)."""
    accept: AcceptConfig = Field(default_factory=AcceptConfig)
    charset_fallback: str = "utf-8"
    """Python codec used when MSH-18 is empty or unknown."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    allow: tuple[Cidr, ...] | None = None
    """Peer addresses (CIDRs) allowed to connect; omit for any."""
    senders: tuple[SenderBinding, ...] | None = None
    """mTLS sender binding: when set, a message is accepted only if its MSH-3/MSH-4 is allowed
    for the client certificate presented (else AR/CR with ERR-3 204, kept in quarantine as
    sender_not_allowed). Needs `tls` with `ca`; use `require_client_cert: true`."""
    ordering: OrderingConfig = Field(default_factory=OrderingConfig)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    retention: ChannelRetentionConfig | None = None
    """Keep this channel's finished messages longer or shorter than store.retention says."""
    pipeline: tuple[PluginConfig, ...] = ()
    """Stages, in order; each `{type: <stage>, ...}`."""
    sinks: tuple[PluginConfig, ...] = Field(min_length=1)
    """Delivery targets; each gets every message. Each `{type: <sink>, name: ..., ...}`."""
    samples_dir: Path | None = None
    """Sample messages (*.hl7 with *.expected.json) for channel tests; relative to the channel file.
    Default: samples/ beside an included channel file, when it exists."""

    _version: str = PrivateAttr("")

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        problem = check_name(value, "channel name")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("charset_fallback")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown charset {value!r} (use a Python codec, e.g. 'cp1252')") from None
        return value

    @field_validator("allow")
    @classmethod
    def _allow_not_empty(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is not None and not value:
            raise ValueError("an empty allow list admits nobody; omit the key to allow any peer")
        return value

    @field_validator("senders")
    @classmethod
    def _senders_not_empty(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is not None and not value:
            raise ValueError("an empty senders list admits no message; omit the key to skip sender binding")
        return value

    @model_validator(mode="after")
    def _senders_need_client_certificates(self) -> Self:
        if self.senders is not None and (self.tls is None or self.tls.ca is None):
            raise ValueError("'senders' binds client certificates: it needs 'tls' with 'ca' "
                             "(and require_client_cert: true)")
        return self

    @field_validator("sinks")
    @classmethod
    def _name_sinks(cls, value: tuple[BaseModel, ...], info: ValidationInfo) -> tuple[BaseModel, ...]:
        types = [plugin_type(s) for s in value]
        names = default_sink_names(types, [getattr(s, "name", None) for s in value])
        if not _context(info).get(CTX_TOPOLOGY_CHECKED):
            for name in names:
                if names.count(name) > 1:
                    raise ValueError(f"sink name {name!r} is used twice; give each sink a distinct 'name'")
        return tuple(_with_name(s, n) for s, n in zip(value, names, strict=True))

    def model_post_init(self, context: Any, /) -> None:
        base = context.get(CTX_BASE_DIR) if isinstance(context, dict) else None
        # Samples do not change what the channel does, and their path depends on the checkout.
        normalised = self.model_dump(mode="json", context={"relative_to": base}, exclude={"samples_dir"})
        digest = hashlib.sha256(json.dumps(normalised, sort_keys=True, separators=(",", ":")).encode())
        self._version = digest.hexdigest()[:12]

    @property
    def channel_version(self) -> str:
        """Short stable hash of the normalised channel config (defaults filled, paths as written)."""
        return self._version

    @property
    def version(self) -> str:
        """Same as `channel_version`."""
        return self._version

    @property
    def sink_names(self) -> list[str]:
        return [str(getattr(s, "name", None) or plugin_type(s)) for s in self.sinks]

    def allows(self, peer_ip: str) -> bool:
        """Is a connection from `peer_ip` admitted by `allow`? (IPv4-mapped IPv6 counts as IPv4.)"""
        if self.allow is None:
            return True
        try:
            addr = ipaddress.ip_address(peer_ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)


_SECTIONS = frozenset({"store", "admin", "logging", "channels", "include", "encryption"})


class EngineConfig(_Model):
    """The whole engine: store, admin, logging and channels (inline and included)."""

    store: StoreConfig = Field(default_factory=dict, validate_default=True)  # validated: paths resolve
    admin: AdminConfig = Field(default_factory=AdminConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    include: tuple[str, ...] = ()
    """Channel files to include: globs relative to this file, e.g. ../channels/*/channel.yaml."""
    channels: tuple[ChannelConfig, ...] = ()
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """On SIGTERM/SIGINT, drain for at most this long (forced at 3/4 of it; duplicates may follow)."""
    workers: int | Literal["auto"] = "auto"
    """Processes that run the channels' stages (mapping), so conversion uses other cores while
    the listener keeps answering. 0 runs stages in the engine process; auto = CPU count - 1."""
    workers_nice: int = Field(default=10, ge=0, le=19)
    """Niceness added to the stage worker processes: when the cores are busy the kernel
    favours the engine process (store, then ACK) over mapping, which works off the durable
    queue. 0 gives workers the same priority as the listener."""
    encryption: EncryptionConfig | None = None
    """Encrypt stored message bytes at rest (AES-256-GCM); omit to store them as received."""

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section written with nothing under it (`store:`) means its defaults."""
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}

    @model_validator(mode="after")
    def _topology(self, info: ValidationInfo) -> Self:
        if _context(info).get(CTX_TOPOLOGY_CHECKED):
            return self
        problems = check_topology(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_post_init(self, context: Any, /) -> None:
        base = context.get(CTX_BASE_DIR) if isinstance(context, dict) else None
        if isinstance(base, Path):
            self._base_dir = base

    @property
    def base_dir(self) -> Path:
        """Directory relative data paths were resolved against (pass as BuildContext.config_dir)."""
        return self._base_dir

    @property
    def audit_path(self) -> Path:
        """Where the audit trail goes: logging.audit_file, else beside the SQLite store."""
        if self.logging.audit_file is not None:
            return Path(self.logging.audit_file)
        if self.store.path is not None:
            return Path(self.store.path).parent / "audit.log"
        return self._base_dir / "data" / "audit.log"

    def channel(self, name: str) -> ChannelConfig:
        """The channel called `name`; KeyError naming the known channels otherwise."""
        for ch in self.channels:
            if ch.name == name:
                return ch
        known = [ch.name for ch in self.channels]
        hint = difflib.get_close_matches(name, known, n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known) or 'none'}"
        raise KeyError(f"no channel {name!r}{more}")


def check_topology(config: EngineConfig) -> list[str]:
    """Cross-channel rules for configs built in Python (the loader checks them with positions)."""
    problems: list[str] = []
    names = [ch.name for ch in config.channels]
    problems += [f"duplicate channel name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})]
    taken: list[tuple[HostPort, str]] = [(config.admin.listen, "admin.listen")]
    for ch in config.channels:
        if not ch.enabled:
            continue
        clash = next((owner for addr, owner in taken if addr.overlaps(ch.listen)), None)
        if clash:
            problems.append(f"channel {ch.name!r}: listen address {ch.listen} is also used by {clash}")
        taken.append((ch.listen, f"channel {ch.name!r}"))
    return problems

