"""Segment maps (HL7 v2-to-FHIR IG mappings/segments/*.csv), one module per topic.

Importing this package imports every module in it, and each module registers its
segment maps with ``messages.segment_mapper``. To add segments, drop a module here
(see channels/mappers/messages.py, "HOW TO ADD A SEGMENT MAP"); nothing else changes.

Mine: header.py (MSH, EVN), patient.py (PID, PD1, NK1, MRG), insurance.py (IN1, IN2, GT1).
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
