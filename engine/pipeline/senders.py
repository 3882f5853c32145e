"""mTLS sender binding: which MSH-3/MSH-4 a client certificate may send as.

Mutual TLS proves which system holds the connection; MSH-3 (sending application) and
MSH-4 (sending facility) are only what that system claims. A channel's `senders:` list
ties the two together, so a compromised or misconfigured lab system cannot inject
messages in the name of the ADT system (HL7 v2.5 ch. 2.15.9: MSH-3/4 are HD, namespace
id ^ universal id ^ universal id type).

A refused message gets AR (CR in enhanced mode) with ERR-3 = 204 "Unknown key
identifier" from HL7 table 0357, located at MSH-3 (or MSH-4 when only the facility is
wrong): the sender key the message names is unknown for this certificate. 204 rather
than 207 because 207 (application internal error) is what this engine answers for a
store outage, which a sender should resend; a binding refusal will fail every time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.config.models import SenderBinding
from engine.hl7.errors import AckError, ErrorCode
from engine.mllp.server import ConnectionInfo
from engine.types import MessageHeader

REFUSAL_TEXT = "Sender not allowed for this client certificate"
QUARANTINE_REASON = "sender_not_allowed"

# Subject attribute names as engine.mllp.tls.peer_subject reports them (OpenSSL long names).
_CN = "commonName"
_O = "organizationName"


def _attribute_matches(subject: Mapping[str, str], name: str, wanted: str) -> bool:
    """Exact match; a repeated attribute (joined by ", ") matches when one of its values does."""
    value = subject.get(name)
    if value is None:
        return False
    return value == wanted or wanted in value.split(", ")


def _field_matches(value: str, patterns: Sequence[str], component_sep: str) -> bool:
    """`*` any; `A^B^C` the whole HD field; `A` the namespace id (first component)."""
    namespace = value.split(component_sep, 1)[0]
    whole = value if component_sep == "^" else value.replace(component_sep, "^")
    for pattern in patterns:
        if pattern == "*":
            return True
        if ("^" in pattern and whole == pattern) or ("^" not in pattern and namespace == pattern):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Binding:
    cn: str | None
    o: str | None
    san_dns: str | None  # lower-cased: DNS names compare case-insensitively
    msh3: tuple[str, ...]
    msh4: tuple[str, ...] | None

    def matches_certificate(self, subject: Mapping[str, str] | None, dns_names: Sequence[str]) -> bool:
        if subject is None and not dns_names:
            return False  # no verified client certificate
        subject = subject or {}
        if self.cn is not None and not _attribute_matches(subject, _CN, self.cn):
            return False
        if self.o is not None and not _attribute_matches(subject, _O, self.o):
            return False
        return self.san_dns is None or self.san_dns in (name.lower() for name in dns_names)


class SenderPolicy:
    """The compiled `senders:` list of one channel (built once, checked per message)."""

    def __init__(self, bindings: Sequence[SenderBinding]) -> None:
        self._bindings = tuple(
            _Binding(b.cn, b.o, b.san_dns.lower() if b.san_dns else None, tuple(b.msh3),
                     tuple(b.msh4) if b.msh4 is not None else None)
            for b in bindings
        )

    def refusal(self, header: MessageHeader, conn: ConnectionInfo) -> AckError | None:
        """None when some binding matching the connection's certificate allows this
        MSH-3/MSH-4; otherwise the ERR to answer with (table 0357 code 204)."""
        component_sep = header.encoding_chars[:1] or "^"
        application_ok = False
        for binding in self._bindings:
            if not binding.matches_certificate(conn.tls_subject, conn.tls_dns_names):
                continue
            if not _field_matches(header.sending_application, binding.msh3, component_sep):
                continue
            application_ok = True
            if binding.msh4 is None or _field_matches(header.sending_facility, binding.msh4, component_sep):
                return None
        return AckError(ErrorCode.UNKNOWN_KEY_IDENTIFIER, segment="MSH", sequence=1,
                        field=4 if application_ok else 3, text=REFUSAL_TEXT)


def sender_policy(bindings: Sequence[SenderBinding] | None) -> SenderPolicy | None:
    """The policy for a channel's `senders:` (None when the channel does not bind senders)."""
    return SenderPolicy(bindings) if bindings is not None else None
