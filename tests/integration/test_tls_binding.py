"""mTLS sender binding and IP allow-lists, through the in-process engine on real sockets.

Certificates come from a throwaway CA made by trustme in each test session.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from engine.app import Engine
from engine.config.loader import load_config
from engine.config.models import SenderBinding
from engine.hl7.header import parse_header
from engine.mllp.client import MllpClient
from engine.mllp.server import ConnectionInfo
from engine.mllp.tls import client_context
from engine.pipeline.senders import SenderPolicy
from engine.types import ConfigError, MessageHeader, MessageQuery
from tests.integration.mllp_helpers import RawPeer, metric
from tests.support.messages import adt_a01
from tests.support.mllp import err_code, msa

if os.environ.get("HL7ENGINE_REQUIRE_SERVICES") == "1":
    import trustme  # CI must have it: fail rather than skip
else:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")

PATIENT_FAMILY = "ZZCANARYFAMILY"  # fake PHI: must never reach a log line


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Identity
    lab: Identity  # CN=lab-sender, O=Lab
    adt: Identity  # SAN DNS adt.example.org, CN=adt-feed, O=Hospital
    rogue: Identity  # CN=lab-sender, O=Elsewhere


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    """A CA, a server certificate for 127.0.0.1 and three client certificates, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))

    def issue(name: str, *identities: str, **subject: str) -> Identity:
        cert = ca.issue_cert(*identities, **subject)
        files = Identity(root / f"{name}.pem", root / f"{name}.key")
        cert.cert_chain_pems[0].write_to_path(str(files.cert))
        cert.private_key_pem.write_to_path(str(files.key))
        return files

    yield Pki(
        ca=root / "ca.pem",
        server=issue("server", "127.0.0.1", "localhost"),
        lab=issue("lab", "lab-sender.example.org", common_name="lab-sender", organization_name="Lab"),
        adt=issue("adt", "adt.example.org", common_name="adt-feed", organization_name="Hospital"),
        rogue=issue("rogue", "rogue.example.org", common_name="lab-sender", organization_name="Elsewhere"),
    )


SENDERS = """    senders:
      - cn: lab-sender
        o: Lab
        msh3: [LAB]
        msh4: [HOSP, "HOSP2^1.2.3^ISO"]
      - san_dns: ADT.example.org
        msh3: ["*"]
        msh4: [GENHOSP]
"""


def channel_yaml(tmp: Path, pki: Pki, *, extra: str = SENDERS, tls: bool = True) -> str:
    tls_block = f"""    tls:
      cert: {pki.server.cert}
      key: {pki.server.key}
      ca: {pki.ca}
      require_client_cert: true
""" if tls else ""
    return f"""store:
  path: {tmp / 'store.db'}
admin:
  listen: 127.0.0.1:0
workers: 0
channels:
  - name: lab
    listen: 127.0.0.1:0
{tls_block}{extra}    pipeline:
      - type: v2_to_fhir
    sinks:
      - type: file
        path: {tmp / 'out.ndjson'}
"""


@pytest.fixture
async def make_engine(tmp_path: Path, pki: Pki) -> AsyncIterator[Callable[..., object]]:
    started: list[Engine] = []

    async def make(**kwargs: object) -> Engine:
        path = tmp_path / "engine.yaml"
        path.write_text(channel_yaml(tmp_path, pki, **kwargs), encoding="utf-8")  # type: ignore[arg-type]
        engine = Engine(load_config(path))
        await engine.start()
        started.append(engine)
        return engine

    yield make
    for engine in started:
        await engine.stop(5)


async def send_as(engine: Engine, pki: Pki, who: Identity, payload: str) -> bytes:
    port = engine.channels["lab"].server.port
    async with MllpClient() as client:
        await client.connect("127.0.0.1", port, client_context(pki.ca, who.cert, who.key), timeout=5)
        return await client.send(payload.encode(), timeout=10)


def err_location(ack: bytes) -> str:
    """ERR-2 (segment^sequence^field) of an ACK."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"ERR"):
            return segment.decode().split("|")[2]
    raise AssertionError("no ERR segment")


def sender_refusals() -> float:
    return metric("hl7engine_quarantined_total", channel="lab", reason="sender_not_allowed")


class TestSenderBinding:
    async def test_bound_certificate_may_send_as_its_application(self, make_engine, pki: Pki) -> None:
        """CN=lab-sender/O=Lab sending as MSH-3 LAB from MSH-4 HOSP is accepted and stored."""
        engine = await make_engine()
        ack = await send_as(engine, pki, pki.lab, adt_a01("OK1", sending_app="LAB", sending_facility="HOSP"))
        assert ["AA", "OK1"] == msa(ack)[:2]
        assert ["OK1"] == [m.control_id for m in await engine.store.query(MessageQuery())]

    async def test_whole_hd_field_matches_a_pattern_with_components(self, make_engine, pki: Pki) -> None:
        """An allowed value written as namespace^universal id^type must match MSH-4 as a whole."""
        engine = await make_engine()
        ack = await send_as(engine, pki, pki.lab,
                            adt_a01("HD1", sending_app="LAB^9.9^ISO", sending_facility="HOSP2^1.2.3^ISO"))
        assert "AA" == msa(ack)[0]

    async def test_other_application_is_refused_with_204_and_quarantined(self, make_engine, pki: Pki) -> None:
        """The lab certificate claiming MSH-3 ADT gets AR, ERR-3 204 at MSH-3; nothing is stored."""
        engine = await make_engine()
        before = sender_refusals()
        ack = await send_as(engine, pki, pki.lab, adt_a01("BAD1", sending_app="ADT", sending_facility="HOSP"))
        assert ["AR", "BAD1"] == msa(ack)[:2]
        assert ("204", "MSH^1^3") == (err_code(ack), err_location(ack))
        assert [] == await engine.store.query(MessageQuery())
        (frame,) = await engine.store.quarantined("lab")
        assert "sender_not_allowed" == frame.reason
        assert 1 == sender_refusals() - before

    async def test_other_facility_is_refused_at_msh4(self, make_engine, pki: Pki) -> None:
        """The right application from a facility not bound to the certificate is refused at MSH-4."""
        engine = await make_engine()
        ack = await send_as(engine, pki, pki.lab, adt_a01("BAD2", sending_app="LAB", sending_facility="ELSEWHERE"))
        assert ("AR", "204", "MSH^1^4") == (msa(ack)[0], err_code(ack), err_location(ack))

    async def test_san_dns_binding_is_case_insensitive(self, make_engine, pki: Pki) -> None:
        """A binding on subjectAltName DNS admits that certificate for any MSH-3 from its facility."""
        engine = await make_engine()
        ok = await send_as(engine, pki, pki.adt, adt_a01("SAN1"))  # EPICADT from GENHOSP
        assert "AA" == msa(ok)[0]
        refused = await send_as(engine, pki, pki.adt, adt_a01("SAN2", sending_facility="HOSP"))
        assert ("AR", "MSH^1^4") == (msa(refused)[0], err_location(refused))

    async def test_every_certificate_attribute_must_match(self, make_engine, pki: Pki) -> None:
        """Right CN, wrong O: the binding does not apply, so the message is refused."""
        engine = await make_engine()
        ack = await send_as(engine, pki, pki.rogue, adt_a01("ROGUE", sending_app="LAB", sending_facility="HOSP"))
        assert ("AR", "204") == (msa(ack)[0], err_code(ack))

    async def test_enhanced_mode_refusal_is_cr(self, make_engine, pki: Pki) -> None:
        """With MSH-15 valued the refusal is a commit reject (CR)."""
        engine = await make_engine()
        ack = await send_as(engine, pki, pki.lab,
                            adt_a01("ENH", sending_app="ADT", accept_ack="AL", app_ack="NE"))
        assert "CR" == msa(ack)[0]

    async def test_refusal_log_names_fields_never_values(self, make_engine, pki: Pki) -> None:
        """The refusal is logged with channel, field and certificate CN, never message content."""
        engine = await make_engine()
        with structlog.testing.capture_logs() as logs:
            await send_as(engine, pki, pki.lab, adt_a01("LOG1", sending_app="ADT", family=PATIENT_FAMILY))
        (event,) = [e for e in logs if e["event"] == "sender_not_allowed"]
        assert ("lab", "MSH-3", "lab-sender") == (event["channel"], event["field"], event["certificate_cn"])
        assert PATIENT_FAMILY not in repr(logs)


class TestAllowList:
    async def test_address_outside_the_list_is_closed_before_any_byte(self, make_engine, pki: Pki) -> None:
        """A TLS channel allowing only 10.0.0.0/8 closes a loopback peer without a TLS byte, and counts it."""
        engine = await make_engine(extra="    allow: [10.0.0.0/8]\n" + SENDERS)
        before = metric("hl7engine_connections_total", channel="lab", outcome="refused_address")
        peer = await RawPeer.connect(engine.channels["lab"].server.port)
        with contextlib.suppress(ConnectionError):  # the server may have closed already
            await peer.write(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello: never read
        assert b"" == await peer.read_eof()
        assert 1 == metric("hl7engine_connections_total", channel="lab", outcome="refused_address") - before

    async def test_address_inside_the_list_is_served(self, make_engine, pki: Pki) -> None:
        """A plain channel allowing 127.0.0.0/8 answers a loopback sender."""
        engine = await make_engine(extra="    allow: [127.0.0.0/8]\n", tls=False)
        peer = await RawPeer.connect(engine.channels["lab"].server.port)
        await peer.send(adt_a01("IN1").encode())
        assert ["AA", "IN1"] == msa(await peer.read_frame(timeout=10))[:2]
        await peer.close()


class TestSenderConfig:
    def test_senders_need_tls_with_a_ca(self, tmp_path: Path, pki: Pki) -> None:
        """Binding senders on a channel without client certificates is a configuration error."""
        path = tmp_path / "engine.yaml"
        path.write_text(channel_yaml(tmp_path, pki, tls=False), encoding="utf-8")
        with pytest.raises(ConfigError, match="senders"):
            load_config(path)

    def test_a_binding_must_name_a_certificate_attribute(self) -> None:
        """A binding with only MSH values would match every certificate: refused."""
        with pytest.raises(ValueError, match="cn"):
            SenderBinding.model_validate({"msh3": ["LAB"]})


class TestSenderPolicy:
    def header(self, msh3: str, msh4: str, sep: str = "^") -> MessageHeader:
        encoding = f"{sep}~\\&"
        return parse_header(f"MSH|{encoding}|{msh3}|{msh4}|R|F|20260101||ADT{sep}A01|C1|P|2.5.1\r")

    def conn(self, cn: str | None = None, dns: tuple[str, ...] = ()) -> ConnectionInfo:
        subject = {"commonName": cn} if cn else None
        return ConnectionInfo("127.0.0.1", 1, 1, subject, dns)

    def test_no_client_certificate_matches_nothing(self) -> None:
        """A plain connection (no certificate) is refused by any binding, even a '*' one."""
        policy = SenderPolicy([SenderBinding(cn="x", msh3=("*",))])
        assert policy.refusal(self.header("LAB", "HOSP"), self.conn()) is not None

    def test_component_separator_of_the_sender_is_honoured(self) -> None:
        """Whole-field patterns are written with '^' whatever component separator the sender uses."""
        policy = SenderPolicy([SenderBinding(cn="lab", msh3=("LAB^1.2^ISO",))])
        header = self.header("LAB$1.2$ISO", "HOSP", sep="$")
        assert policy.refusal(header, self.conn("lab")) is None

    def test_namespace_pattern_ignores_other_components(self) -> None:
        """A pattern without components compares with MSH-3.1 only."""
        policy = SenderPolicy([SenderBinding(cn="lab", msh3=("LAB",))])
        assert policy.refusal(self.header("LAB^1.2^ISO", "H"), self.conn("lab")) is None
        assert policy.refusal(self.header("LABX", "H"), self.conn("lab")) is not None
