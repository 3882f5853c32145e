"""TLS contexts for MLLP listeners and clients (TLS 1.2 or newer only).

MLLP itself has no security; HL7 deployments wrap it in TLS, with client certificates
(mutual TLS) when the sender must be identified. The certificate subject is the only
thing about the peer the engine exposes to handlers: it names a system, never a patient.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import cast


def server_context(
    cert: Path, key: Path, ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A listener context. `ca` verifies client certificates; mutual TLS needs it.

    Without `require_client_cert` a client certificate is still checked against `ca`
    when one is offered (CERT_OPTIONAL), so a handler never sees an unverified subject.
    """
    if require_client_cert and ca is None:
        raise ValueError("require_client_cert needs a CA file to verify client certificates")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context. `ca` replaces the system trust store; `cert`/`key` enable mutual TLS.

    `verify=False` turns off certificate and host name checks (testing only: it accepts
    any server, including an attacker in the middle).
    """
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key) if key is not None else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str] | None:
    """The verified peer certificate's subject as {attribute: value}, or None without one.

    Attribute names are OpenSSL's long names (commonName, organizationName, ...). A
    repeated attribute (e.g. two organizationalUnitName) keeps its values joined by ", ".
    """
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: dict[str, str] = {}
    # getpeercert(): "subject" is a tuple of RDNs, each a tuple of (name, value) pairs.
    rdns = cast(tuple[tuple[tuple[str, str], ...], ...], cert.get("subject", ()))
    for rdn in rdns:
        for name, value in rdn:
            subject[name] = f"{subject[name]}, {value}" if name in subject else value
    return subject or None
