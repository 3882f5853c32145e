"""Messages the benchmark sends, with a fresh control id (MSH-10) per send.

The two built-in messages are written for this project (fictional people, places
and numbers): an ADT^A01 with IN1 of about 860 bytes, the "typical registration"
of issue #6, and an ORU^R01 with 20 OBX for the conversion benchmark. Segments
follow HL7 v2.5.1 chapter 3 (ADT), chapter 6 (IN1) and chapter 7 (ORU); every
field is built from a numbered list so its position is visible in review.

Optionally, messages from the third-party corpus (../shared/corpus) join the mix.
Their bytes are sent as stored (terminators normalised to CR, batch envelopes
FHS/BHS/BTS/FTS dropped); only MSH-10 is replaced. Messages whose MSH-15 asks for
no accept ACK (NE, ER) are left out: a sender that waits for each ACK cannot send them.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SEGMENT_TERMINATOR = "\r"
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_MSH10 = 10


def _segment(name: str, fields: dict[int, str]) -> str:
    """Build one segment from {field number: value}; gaps become empty fields.

    For MSH, field 1 is the field separator itself and 2 the encoding characters
    (HL7 v2 ch. 2.14.9), so numbering starts at 3 after the literal `MSH|^~\\&`.
    """
    first = 3 if name == "MSH" else 1
    last = max(fields)
    values = [fields.get(n, "") for n in range(first, last + 1)]
    prefix = "MSH|^~\\&" if name == "MSH" else name
    return "|".join([prefix, *values])


def _message(*segments: str) -> str:
    return SEGMENT_TERMINATOR.join(segments) + SEGMENT_TERMINATOR


def _msh(message_type: str, control_id: str, sending_app: str) -> str:
    return _segment(
        "MSH",
        {
            3: sending_app,  # MSH-3 sending application
            4: "GOODHEALTH",  # MSH-4 sending facility
            5: "HL7ENGINE",  # MSH-5 receiving application
            6: "BENCH",  # MSH-6 receiving facility
            7: "20240502101500-0500",  # MSH-7 date/time of message
            9: message_type,  # MSH-9 message type
            10: control_id,  # MSH-10 message control id (replaced per send)
            11: "P",  # MSH-11 processing id
            12: "2.5.1",  # MSH-12 version id
            17: "USA",  # MSH-17 country code
            18: "UNICODE UTF-8",  # MSH-18 character set
        },
    )


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """The per-patient fields of the benchmark ADT: fictional, generated, never real people."""

    mrn: str
    family: str
    given: str
    middle: str
    spouse: str
    birth_date: str  # YYYYMMDD
    house: int
    phone: str  # 7 digits
    visit: str
    policy: str
    admitted: str  # YYYYMMDDHHMMSS, local time of the sender (offset added in the message)


#: The first patient is the one the single-message benchmarks and tests have always used.
FIRST_PATIENT = SyntheticPatient(
    mrn="MRN4471920", family="Bexley", given="Marguerite", middle="Anne", spouse="Thomas",
    birth_date="19780914", house=41, phone="5550172", visit="V88213405", policy="XQP882301557",
    admitted="20240502101000",
)

_FAMILIES = ("Bexley", "Okonkwo", "Lindqvist", "Ferreira", "Nakamura", "Dubois", "Kowalski", "Haddad",
             "Abernathy", "Castellano", "Moreau", "Szabo", "Whitfield", "Varga", "Ibarra", "Thornbury")
_GIVENS = ("Marguerite", "Ezekiel", "Ingrid", "Tomasz", "Yara", "Desmond", "Oluwaseun", "Priya",
           "Leopold", "Camila", "Henrik", "Noor", "Augustin", "Wren", "Matthias", "Rosalind")


def synthetic_patient(number: int) -> SyntheticPatient:
    """Patient `number` of a deterministic population (0 is FIRST_PATIENT).

    Names, identifiers, dates and numbers all vary with `number`, so per-message work
    (and any cache a mapper or validator keeps) sees what a real feed shows: each
    admission a different patient, the same hospital, wards and doctors.
    """
    if number == 0:
        return FIRST_PATIENT
    family = _FAMILIES[number % len(_FAMILIES)]
    given = _GIVENS[(number // len(_FAMILIES)) % len(_GIVENS)]
    middle = _GIVENS[(number * 7 + 3) % len(_GIVENS)]
    spouse = _GIVENS[(number * 11 + 5) % len(_GIVENS)]
    year = 1930 + number % 90
    month = 1 + number % 12
    day = 1 + number % 28
    return SyntheticPatient(
        mrn=f"MRN{4471920 + number * 37:07d}",
        family=family,
        given=given,
        middle=middle,
        spouse=spouse,
        birth_date=f"{year:04d}{month:02d}{day:02d}",
        house=1 + number % 240,
        phone=f"555{number % 10000:04d}",
        visit=f"V{88213405 + number * 13:08d}",
        policy=f"XQP{882301557 + number * 101:09d}",
        admitted=f"202405{1 + number % 28:02d}{number % 24:02d}{number % 60:02d}00",
    )


def adt_a01_with_in1(patient: SyntheticPatient = FIRST_PATIENT) -> str:
    """A typical admission with one insurance (ADT^A01 + IN1), about 860 bytes."""
    address = f"{patient.house} Quarry Lane^Apt 3B^Millbrook^NY^12545^USA^H"
    return _message(
        _msh("ADT^A01^ADT_A01", "BENCH0000000001", "REGADT"),
        _segment(
            "EVN",
            {
                2: "20240502101500-0500",  # EVN-2 recorded date/time
            },
        ),
        _segment(
            "PID",
            {
                1: "1",  # PID-1 set id
                3: f"{patient.mrn}^^^GOODHEALTH^MR",  # PID-3 identifiers
                5: f"{patient.family}^{patient.given}^{patient.middle}^^Ms.^^L",  # PID-5 patient name
                7: patient.birth_date,  # PID-7 date of birth
                8: "F",  # PID-8 administrative sex
                11: address,  # PID-11 address
                # PID-13 home phone and e-mail
                13: f"^PRN^PH^^1^845^{patient.phone}~^NET^Internet^{patient.given[0].lower()}."
                f"{patient.family.lower()}@example.org",
                15: "en^English^ISO639",  # PID-15 primary language
                16: "M^Married^HL70002",  # PID-16 marital status
            },
        ),
        _segment(
            "NK1",
            {
                1: "1",  # NK1-1 set id
                2: f"{patient.family}^{patient.spouse}^R",  # NK1-2 name
                3: "SPO^Spouse^HL70063",  # NK1-3 relationship
                4: address,  # NK1-4 address
            },
        ),
        _segment(
            "PV1",
            {
                1: "1",  # PV1-1 set id
                2: "I",  # PV1-2 patient class
                3: "3W^312^B^GOODHEALTH",  # PV1-3 assigned location
                7: "1174^Okafor^Chidi^^^Dr.^MD",  # PV1-7 attending doctor
                10: "MED",  # PV1-10 hospital service
                19: f"{patient.visit}^^^GOODHEALTH^VN",  # PV1-19 visit number
                44: f"{patient.admitted}-0500",  # PV1-44 admit date/time
            },
        ),
        _segment(
            "IN1",
            {
                1: "1",  # IN1-1 set id
                2: "PPO-GOLD^Empire Gold PPO^L",  # IN1-2 health plan id
                3: "EMP7731^^^NAIC^NIIP",  # IN1-3 insurance company id
                4: "Empire Plan Mutual",  # IN1-4 insurance company name
                5: "PO Box 4120^^Albany^NY^12204^USA",  # IN1-5 company address
                7: "^WPN^PH^^1^800^5550111",  # IN1-7 company phone
                8: "GRP-40977",  # IN1-8 group number
                9: "Millbrook Tool Works",  # IN1-9 group name
                12: "20240101",  # IN1-12 plan effective date
                13: "20241231",  # IN1-13 plan expiration date
                16: f"{patient.family}^{patient.given}^{patient.middle}",  # IN1-16 name of insured
                17: "SEL^Self^HL70063",  # IN1-17 insured's relationship to patient
                18: patient.birth_date,  # IN1-18 insured's date of birth
                36: patient.policy,  # IN1-36 policy number
            },
        ),
    )


#: The first patient's admission: the single message of convert_bench and the tests.
ADT_A01_WITH_IN1: str = adt_a01_with_in1()

# (LOINC code, display, value, unit, reference range, abnormal flag): a CBC and a
# basic metabolic panel, 20 results in all.
_LAB_RESULTS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("6690-2", "Leukocytes [#/volume] in Blood", "7.2", "10*3/uL", "4.0-11.0", "N"),
    ("789-8", "Erythrocytes [#/volume] in Blood", "4.51", "10*6/uL", "4.20-5.40", "N"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "13.6", "g/dL", "12.0-16.0", "N"),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood", "40.1", "%", "36.0-46.0", "N"),
    ("787-2", "MCV [Entitic volume]", "88.9", "fL", "80.0-100.0", "N"),
    ("785-6", "MCH [Entitic mass]", "30.2", "pg", "27.0-33.0", "N"),
    ("786-4", "MCHC [Mass/volume]", "33.9", "g/dL", "32.0-36.0", "N"),
    ("788-0", "Erythrocyte distribution width", "13.1", "%", "11.5-14.5", "N"),
    ("777-3", "Platelets [#/volume] in Blood", "412", "10*3/uL", "150-400", "H"),
    ("32623-1", "Platelet mean volume", "9.8", "fL", "7.5-11.5", "N"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "131", "mg/dL", "70-99", "H"),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "17", "mg/dL", "7-20", "N"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "0.92", "mg/dL", "0.60-1.10", "N"),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "139", "mmol/L", "135-145", "N"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "3.3", "mmol/L", "3.5-5.1", "L"),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "101", "mmol/L", "98-107", "N"),
    ("2028-9", "Carbon dioxide [Moles/volume] in Serum or Plasma", "25", "mmol/L", "22-29", "N"),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "9.4", "mg/dL", "8.6-10.3", "N"),
    ("2885-2", "Protein [Mass/volume] in Serum or Plasma", "7.1", "g/dL", "6.0-8.3", "N"),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "4.2", "g/dL", "3.5-5.2", "N"),
)


def _obx(set_id: int, loinc: str, display: str, value: str, unit: str, ref: str, flag: str) -> str:
    return _segment(
        "OBX",
        {
            1: str(set_id),  # OBX-1 set id
            2: "NM",  # OBX-2 value type
            3: f"{loinc}^{display}^LN",  # OBX-3 observation identifier
            5: value,  # OBX-5 observation value
            6: f"{unit}^{unit}^UCUM",  # OBX-6 units
            7: ref,  # OBX-7 reference range
            8: flag,  # OBX-8 interpretation
            11: "F",  # OBX-11 result status
            14: "20240502093000-0500",  # OBX-14 observation date/time
        },
    )


#: A laboratory result with 20 numeric observations (ORU^R01), for convert_bench.
ORU_R01_20_OBX: str = _message(
    _msh("ORU^R01^ORU_R01", "BENCH0000000002", "LABSYS"),
    _segment(
        "PID",
        {
            1: "1",  # PID-1 set id
            3: "MRN4471920^^^GOODHEALTH^MR",  # PID-3 identifiers
            5: "Bexley^Marguerite^Anne^^Ms.^^L",  # PID-5 patient name
            7: "19780914",  # PID-7 date of birth
            8: "F",  # PID-8 administrative sex
        },
    ),
    _segment(
        "ORC",
        {
            1: "RE",  # ORC-1 order control
            2: "ORD448120^GOODHEALTH",  # ORC-2 placer order number
            3: "LAB99120^LABSYS",  # ORC-3 filler order number
            12: "1174^Okafor^Chidi^^^Dr.^MD",  # ORC-12 ordering provider
        },
    ),
    _segment(
        "OBR",
        {
            1: "1",  # OBR-1 set id
            2: "ORD448120^GOODHEALTH",  # OBR-2 placer order number
            3: "LAB99120^LABSYS",  # OBR-3 filler order number
            4: "58410-2^CBC panel - Blood by Automated count^LN",  # OBR-4 universal service id
            7: "20240502090000-0500",  # OBR-7 observation date/time
            16: "1174^Okafor^Chidi^^^Dr.^MD",  # OBR-16 ordering provider
            22: "20240502093000-0500",  # OBR-22 results report date/time
            25: "F",  # OBR-25 result status
        },
    ),
    *(_obx(n, *row) for n, row in enumerate(_LAB_RESULTS, start=1)),
)


# ------------------------------------------------------------ control ids


@dataclass(frozen=True, slots=True)
class Template:
    """A message split around its MSH-10 so a new control id costs one concatenation."""

    name: str
    before_control_id: bytes
    after_control_id: bytes

    @classmethod
    def from_bytes(cls, name: str, message: bytes) -> Template:
        """Split `message` at MSH-10 (HL7 v2 ch. 2.14.9.10); MSH-1 is the byte after `MSH`."""
        if not message.startswith(b"MSH") or len(message) < 8:
            raise ValueError(f"{name}: message does not start with an MSH segment")
        separator = message[3:4]
        header_end = message.find(b"\r")
        header_end = len(message) if header_end < 0 else header_end
        # MSH-1 is the separator at index 3; MSH-n starts after the (n-1)th separator.
        start = 3
        for _ in range(_MSH10 - 2):
            start = message.find(separator, start + 1, header_end)
            if start < 0:
                raise ValueError(f"{name}: MSH has fewer than {_MSH10} fields")
        start += 1
        end = message.find(separator, start, header_end)
        end = header_end if end < 0 else end
        return cls(name, message[:start], message[end:])

    def render(self, control_id: bytes) -> bytes:
        """The message with MSH-10 set to `control_id`."""
        return self.before_control_id + control_id + self.after_control_id

    @property
    def expects_commit_ack(self) -> bool:
        """False when MSH-15 (accept acknowledgment type) is NE or ER: no ACK would come back.

        HL7 v2 ch. 2.9.3 (enhanced mode): NE = never, ER = only on error; our sender
        waits for every ACK, so such messages cannot be part of its load.
        """
        separator = self.after_control_id[:1]
        header_end = self.after_control_id.find(b"\r")
        header = self.after_control_id[: header_end if header_end >= 0 else None]
        # after_control_id starts at the separator ending MSH-10: index 5 is MSH-15.
        fields = header.split(separator)
        accept = fields[5].strip().upper() if separator and len(fields) > 5 else b""
        return accept not in (b"NE", b"ER")

    @property
    def size(self) -> int:
        """Bytes of the message with a 16-byte control id."""
        return len(self.before_control_id) + 16 + len(self.after_control_id)


class ControlIds:
    """Unique MSH-10 values: a random 6-character run tag and a counter, 16 chars (ST ≤ 20).

    Unique ids keep the engine's duplicate detection (DESIGN §4) out of the measurement.
    """

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3).upper()
        self._counter = itertools.count(1)

    def next(self) -> bytes:
        return f"{self.tag}{next(self._counter):010d}".encode("ascii")


class MessageSource:
    """Cycles through templates, giving every message a unique control id."""

    def __init__(self, templates: Sequence[Template], control_ids: ControlIds | None = None) -> None:
        if not templates:
            raise ValueError("no message templates")
        self.templates = list(templates)
        self.control_ids = control_ids or ControlIds()
        self._cycle: Iterator[Template] = itertools.cycle(self.templates)

    def next(self) -> tuple[bytes, bytes]:
        """(control id, message bytes) for the next send."""
        control_id = self.control_ids.next()
        return control_id, next(self._cycle).render(control_id)

    @property
    def mean_size(self) -> float:
        return sum(t.size for t in self.templates) / len(self.templates)


#: Patients in the default load: enough that no per-value cache is warm for every
#: message, few enough to build in milliseconds.
POPULATION = 1000


def builtin_templates(population: int = POPULATION) -> list[Template]:
    """The ADT^A01 with IN1 (the default benchmark load), one template per patient."""
    return [
        Template.from_bytes(f"adt_a01_in1#{n}", adt_a01_with_in1(synthetic_patient(n)).encode("ascii"))
        for n in range(population)
    ]


# ----------------------------------------------------------------- corpus


def corpus_dir(repo_root: Path) -> Path:
    """Where the shared corpus sits beside the repository (DESIGN §6)."""
    return (repo_root / ".." / "shared" / "corpus").resolve()


def split_messages(raw: bytes) -> list[bytes]:
    """Messages in one file: terminators normalised to CR, batch segments dropped, BOM removed."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    messages: list[list[bytes]] = []
    for line in lines:
        segment = line.strip(b" \t")
        if not segment or segment[:3] in _BATCH_SEGMENTS:
            continue
        if segment.startswith(b"MSH"):
            messages.append([segment])
        elif messages:
            messages[-1].append(segment)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def corpus_templates(root: Path, limit: int = 200) -> list[Template]:
    """Up to `limit` corpus messages (sorted by path, so runs are comparable) as templates.

    Messages that ask for no accept ACK (MSH-15 NE/ER) are left out.
    """
    templates: list[Template] = []
    for path in sorted(root.rglob("*.hl7")):
        for number, message in enumerate(split_messages(path.read_bytes()), start=1):
            try:
                template = Template.from_bytes(f"{path.relative_to(root)}#{number}", message)
            except ValueError:
                continue  # a deliberately malformed header: not a throughput sample
            if template.expects_commit_ack:
                templates.append(template)
            if len(templates) >= limit:
                return templates
    return templates
