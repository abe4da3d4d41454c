"""Ways out of dermfm into clinical systems: FHIR R4 bundles for an EHR (:mod:`.fhir`) and
DICOMweb for a PACS (:mod:`.dicomweb`: pull a study, push back a DICOM SR and the report as an
encapsulated PDF). Called by the CLI and the server; it never calls them. See docs/interop.md.
"""

from dermfm.interop.fhir import fhir_bundle, report_pdf

__all__ = ["fhir_bundle", "report_pdf"]
