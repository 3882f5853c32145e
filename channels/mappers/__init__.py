"""HL7 v2 → FHIR mapping (HL7 v2-to-FHIR IG), pure functions, no I/O.

Entry points: ``convert.convert_message(text, MappingOptions(...)) -> ConversionResult``;
``v2.parse_message`` (fast parse tree); ``datatypes`` (IG datatype maps);
``messages`` (segment registry, how to add a segment map); ``bundle`` (transaction
Bundle, R5 adaptations); ``validate.validate_bundle``; ``options.MappingOptions``.
Imports here stay lazy so ``import channels.mappers`` costs nothing.
"""
