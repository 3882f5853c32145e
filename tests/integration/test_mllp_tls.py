"""MLLP over TLS and mutual TLS, with a throwaway CA made by trustme."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.mllp.client import MllpClient, MllpConnectionError
from engine.mllp.server import ConnectionInfo, MllpLimits
from engine.mllp.tls import client_context, peer_subject, server_context
from tests.integration.mllp_helpers import RawPeer, metric, running_server, wait_until

if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
    import trustme  # CI must have it: fail rather than skip
else:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Pki]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("lab-sender.example.org", common_name="lab-sender", organization_name="Lab")
    files = Pki(*(tmp_path / name for name in ("ca.pem", "srv.pem", "srv.key", "cli.pem", "cli.key")))
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    yield files


def tls_failures(channel: str) -> float:
    return metric("hl7engine_connections_total", channel=channel, outcome="tls_failed")


class Recorder:
    """An echo handler that remembers the ConnectionInfo of each frame."""

    def __init__(self) -> None:
        self.seen: list[ConnectionInfo] = []

    async def __call__(self, payload: bytes, conn: ConnectionInfo) -> bytes | None:
        self.seen.append(conn)
        return b"ACK|" + payload


class TestMllpTls:
    async def test_tls_round_trip(self, pki: Pki) -> None:
        """A TLS client verifying the server's certificate gets its response."""
        recorder = Recorder()
        context = server_context(pki.server_cert, pki.server_key)
        async with running_server(recorder, ssl_context=context) as server, MllpClient() as client:
            await client.connect("127.0.0.1", server.port, client_context(pki.ca), timeout=5)
            assert await client.send(b"over tls", timeout=5) == b"ACK|over tls"
            assert [c.tls_subject for c in recorder.seen] == [None]
            assert metric("hl7engine_connections_total", channel=server.channel, outcome="accepted") == 1

    async def test_client_rejects_untrusted_server(self, pki: Pki) -> None:
        """A client trusting another CA refuses the server's certificate."""
        context = server_context(pki.server_cert, pki.server_key)
        other_ca = Path(pki.ca.parent / "other.pem")
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        async with running_server(ssl_context=context) as server:
            with pytest.raises(MllpConnectionError):
                await MllpClient().connect("127.0.0.1", server.port, client_context(other_ca), timeout=5)
            await wait_until(lambda: tls_failures(server.channel) == 1, what="tls_failed counted")

    async def test_mutual_tls_exposes_client_subject(self, pki: Pki) -> None:
        """With mutual TLS the handler sees the client certificate's subject."""
        recorder = Recorder()
        context = server_context(pki.server_cert, pki.server_key, pki.ca, require_client_cert=True)
        async with running_server(recorder, ssl_context=context) as server, MllpClient() as client:
            tls = client_context(pki.ca, pki.client_cert, pki.client_key)
            await client.connect("127.0.0.1", server.port, tls, timeout=5)
            assert await client.send(b"mtls", timeout=5) == b"ACK|mtls"
        subject = recorder.seen[0].tls_subject
        assert subject is not None
        assert (subject["commonName"], subject["organizationName"]) == ("lab-sender", "Lab")

    async def test_mutual_tls_refuses_client_without_certificate(self, pki: Pki) -> None:
        """A client without a certificate never reaches the handler and the failure is counted."""
        recorder = Recorder()
        context = server_context(pki.server_cert, pki.server_key, pki.ca, require_client_cert=True)
        async with running_server(recorder, ssl_context=context) as server:
            with pytest.raises(MllpConnectionError):
                # TLS 1.3 clients finish their side of the handshake before the server
                # checks the certificate, so the refusal may surface on connect or on send.
                async with MllpClient() as client:
                    await client.connect("127.0.0.1", server.port, client_context(pki.ca), timeout=5)
                    await client.send(b"no cert", timeout=5)
            await wait_until(lambda: tls_failures(server.channel) == 1, what="tls_failed counted")
            assert recorder.seen == []
            await wait_until(lambda: server.connections == 0, what="refused connection gone")

    async def test_allow_list_checked_before_handshake(self, pki: Pki) -> None:
        """A refused address is closed before any TLS handshake (counted as refused, not tls_failed)."""
        context = server_context(pki.server_cert, pki.server_key)
        async with running_server(ssl_context=context, allow=["10.0.0.0/8"]) as server:
            peer = await RawPeer.connect(server.port)
            assert await peer.read_eof() == b""  # no ServerHello: not a single byte
            labels = {"channel": server.channel}
            assert metric("hl7engine_connections_total", outcome="refused_address", **labels) == 1
            assert metric("hl7engine_connections_total", outcome="tls_failed", **labels) == 0

    async def test_stalled_handshake_times_out(self, pki: Pki) -> None:
        """A peer that opens TCP but never starts TLS is dropped after the handshake timeout."""
        context = server_context(pki.server_cert, pki.server_key)
        limits = MllpLimits(tls_handshake_timeout_s=0.3)
        async with running_server(ssl_context=context, limits=limits) as server:
            peer = await RawPeer.connect(server.port)
            await asyncio.wait_for(peer.read_eof(), 5)
            await wait_until(lambda: server.connections == 0, what="stalled connection gone")
            assert metric("hl7engine_connections_total", channel=server.channel, outcome="tls_failed") == 1

    async def test_drain_closes_connection_in_handshake(self, pki: Pki) -> None:
        """Drain closes a connection still in its TLS handshake at once."""
        context = server_context(pki.server_cert, pki.server_key)
        async with running_server(ssl_context=context) as server:
            peer = await RawPeer.connect(server.port)
            await wait_until(lambda: server.connections == 1, what="connection accepted")
            await asyncio.wait_for(server.drain(5.0), 5)
            assert server.connections == 0
            assert await peer.read_eof() == b""
            labels = {"channel": server.channel, "reason": "shutdown"}
            assert metric("hl7engine_connections_closed_total", **labels) == 1


class TestTlsContexts:
    def test_server_context_minimum_tls12(self, pki: Pki) -> None:
        """Server contexts refuse anything older than TLS 1.2."""
        assert ssl.TLSVersion.TLSv1_2 == server_context(pki.server_cert, pki.server_key).minimum_version

    def test_require_client_cert_needs_ca(self, pki: Pki) -> None:
        """Mutual TLS without a CA to verify clients is a configuration error."""
        with pytest.raises(ValueError, match="CA"):
            server_context(pki.server_cert, pki.server_key, None, require_client_cert=True)

    def test_client_context_verify_off(self) -> None:
        """verify=False disables host name and certificate checks."""
        context = client_context(verify=False)
        assert (context.check_hostname, context.verify_mode) == (False, ssl.CERT_NONE)

    def test_peer_subject_none(self) -> None:
        """No TLS object means no subject."""
        assert peer_subject(None) is None
