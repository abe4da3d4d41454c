"""A consultation report as a FHIR R4 Bundle (JSON), for an electronic health record.

The bundle (``type: collection``; every reference a ``urn:uuid:`` inside it) holds:

- **DiagnosticReport** (status ``preliminary``: decision support a clinician must confirm):
  ``conclusion`` (the narrative summary and the triage advice), ``conclusionCode`` (ICD-10-CM
  codes of the conditions in the conformal prediction set; without a prediction set, of the
  leading candidate), ``presentedForm`` (the clinician's report as PDF, base64), ``result``
  (the Observations), ``imagingStudy`` or ``media`` (the image), ``subject`` (the Patient);
- **Observation** per differential candidate: the condition (ICD-10-CM and dermfm's ontology
  id), its probability as a ``valueQuantity`` (unit ``1``), the probability kind as ``method``
  (calibrated, raw model score, or an adapter's), whether it is in the prediction set
  (``component``);
- **Observation** per characteristic present (MONET concept score, uncalibrated);
- **Observation** of the patient's age, when the user gave it (LOINC 30525-0);
- **ImagingStudy** (a DICOM image: Study, Series and SOP Instance UIDs, SOP class, frame) or
  **Media** (any other image: its file name only);
- **Patient**: only what the user gave (``gender``); no name, identifier or birth date, which
  dermfm never has.

Nothing here needs a FHIR library; ``tests/test_interop_fhir.py`` validates the bundles with
``fhir.resources`` (R4B) and reads them with ``fhirclient`` (R4).
"""

from __future__ import annotations

import base64
import tempfile
import uuid
from pathlib import Path
from typing import Any

from dermfm import __version__
from dermfm.assistant.report import Candidate, ConsultReport

#: FHIR code systems used in the bundle.
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: dermfm's own code systems (ontology nodes, MONET concepts, report kind).
DERMFM_ONTOLOGY = "https://github.com/dermfm/dermfm/ontology"
DERMFM_CONCEPTS = "https://github.com/dermfm/dermfm/concepts"
DERMFM_REPORT = "https://github.com/dermfm/dermfm/report"

#: The DICOM modality code of a photograph (DCM "XC": external-camera photography).
PHOTO_MODALITY = "XC"


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    url = _urn()
    resource["id"] = url.rsplit(":", 1)[1]
    return {"fullUrl": url, "resource": resource}


def _condition_code(candidate: Candidate) -> dict[str, Any]:
    codings = []
    if candidate.icd10cm:
        codings.append({"system": ICD10CM, "code": candidate.icd10cm, "display": candidate.name})
    if candidate.node:
        codings.append({"system": DERMFM_ONTOLOGY, "code": candidate.node})
    return {"coding": codings, "text": candidate.name} if codings else {"text": candidate.name}


def report_pdf(report: ConsultReport) -> bytes:
    """The clinician's report (:func:`~dermfm.assistant.documents.report_markdown`) as PDF."""
    from dermfm.assistant.documents import markdown_to_pdf, report_markdown

    with tempfile.TemporaryDirectory() as tmp:
        return markdown_to_pdf(report_markdown(report), Path(tmp) / "report.pdf").read_bytes()


def _image_resource(report: ConsultReport, patient: str) -> tuple[str, dict[str, Any]]:
    """``("imagingStudy" | "media", resource)`` for the report's image."""
    ref = report.dicom
    if ref is not None and ref.study_uid:
        instance: dict[str, Any] = {
            "uid": ref.instance_uid or "",
            "sopClass": {"system": DICOM_UID, "code": f"urn:oid:{ref.sop_class_uid}"},
        }
        if ref.frame is not None:
            instance["title"] = f"frame {ref.frame} of {ref.frames}"
        series: dict[str, Any] = {
            "uid": ref.series_uid or "",
            "modality": {"system": DCM, "code": PHOTO_MODALITY},
            "numberOfInstances": 1,
            "instance": [instance] if ref.instance_uid else [],
        }
        if report.patient.site:
            series["bodySite"] = {"display": report.patient.site}
        study = {
            "resourceType": "ImagingStudy",
            "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{ref.study_uid}"}],
            "subject": {"reference": patient},
            "series": [series] if ref.series_uid else [],
        }
        return "imagingStudy", study
    media: dict[str, Any] = {
        "resourceType": "Media",
        "status": "completed",
        "subject": {"reference": patient},
        "content": {"contentType": "image/*", "title": Path(report.source).name},
    }
    if report.modality is not None:
        media["modality"] = {"text": report.modality.label}
    if report.patient.site:
        media["bodySite"] = {"text": report.patient.site}
    return "media", media


def _observation(
    patient: str, code: dict[str, Any], value: float, method: str, **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": extra.pop("category", "exam")}]}
        ],
        "code": code,
        "subject": {"reference": patient},
        "valueQuantity": {
            "value": round(float(value), 6),
            "unit": "1",
            "system": UCUM,
            "code": "1",
        },
        "method": {"text": method},
        **extra,
    }


def fhir_bundle(report: ConsultReport, *, pdf: bytes | None = None) -> dict[str, Any]:
    """The FHIR R4 Bundle of a consultation report (see the module doc), as JSON-ready data.

    Args:
        report: the consultation report.
        pdf: the report's PDF for ``presentedForm`` (default: made with :func:`report_pdf`).
    """
    patient_entry = _entry({"resourceType": "Patient"})
    if report.patient.sex:
        patient_entry["resource"]["gender"] = report.patient.sex
    patient = patient_entry["fullUrl"]
    entries = [patient_entry]
    results: list[dict[str, str]] = []

    def add(resource: dict[str, Any], into: list[dict[str, str]] | None = None) -> str:
        entry = _entry(resource)
        entries.append(entry)
        if into is not None:
            into.append({"reference": entry["fullUrl"]})
        return entry["fullUrl"]

    if report.patient.age is not None:
        add(
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]}],
                "code": {"coding": [{"system": LOINC, "code": "30525-0", "display": "Age"}]},
                "subject": {"reference": patient},
                "valueQuantity": {
                    "value": report.patient.age,
                    "unit": "a",
                    "system": UCUM,
                    "code": "a",
                },
            },
            results,
        )
    d = report.differential
    if d is not None:
        for c in d.candidates:
            add(
                _observation(
                    patient,
                    _condition_code(c),
                    c.probability,
                    d.probability_kind,
                    component=[
                        {
                            "code": {"text": "in conformal prediction set"},
                            "valueBoolean": c.in_prediction_set,
                        },
                        {"code": {"text": "rank"}, "valueInteger": c.rank},
                    ],
                    interpretation=[{"text": f"malignancy: {c.malignancy}"}],
                ),
                results,
            )
    for ch in report.characteristics:
        add(
            _observation(
                patient,
                {"coding": [{"system": DERMFM_CONCEPTS, "code": ch.id}], "text": ch.name},
                ch.score,
                "raw MONET concept score (uncalibrated)",
                category="imaging",
            ),
            results,
        )
    kind, image = _image_resource(report, patient)
    image_url = add(image)
    conclusion_codes = []
    if d is not None:
        members = [c for c in d.candidates if c.in_prediction_set] or d.candidates[:1]
        conclusion_codes = [_condition_code(c) for c in members if c.icd10cm]
    summary = " ".join(
        part for part in (report.narrative.summary, f"Triage: {report.triage.level}.") if part
    )
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {
            "coding": [{"system": DERMFM_REPORT, "code": "consultation"}],
            "text": "dermfm skin image consultation (decision support, not a diagnosis)",
        },
        "subject": {"reference": patient},
        "issued": report.created,
        "performer": [{"display": f"dermfm {__version__} ({report.model})"}],
        "result": results,
        "conclusion": f"{summary} {report.triage.advice} {report.disclaimer}".strip(),
        "presentedForm": [
            {
                "contentType": "application/pdf",
                "language": "en",
                "title": f"dermfm report {report.case_id}",
                "data": base64.b64encode(pdf if pdf is not None else report_pdf(report)).decode(),
            }
        ],
    }
    if conclusion_codes:
        diagnostic["conclusionCode"] = conclusion_codes
    if kind == "imagingStudy":
        diagnostic["imagingStudy"] = [{"reference": image_url}]
    else:
        diagnostic["media"] = [{"link": {"reference": image_url}}]
    entries.insert(0, _entry(diagnostic))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": report.created,
        "entry": entries,
    }


__all__ = ["ICD10CM", "fhir_bundle", "report_pdf"]
