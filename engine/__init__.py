"""hl7engine: an HL7 v2 interface engine (MLLP in, durable custody, FHIR out)."""

__version__ = "0.1.0"
