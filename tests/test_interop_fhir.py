"""FHIR R4 export (issue 16, part 3): a consultation as a Bundle that ``fhir.resources`` (R4B)
validates and ``fhirclient`` (an R4 client library) reads, with the coded conclusion, the PDF
report, the differential's probabilities with their kind, the concepts, the image reference
and a Patient holding only what the user gave."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from dicom_samples import DERMOSCOPIC, PATIENT_ID, PATIENT_NAME, make_photo
from fhir.resources.R4B.bundle import Bundle
from fhirclient.models.bundle import Bundle as ClientBundle
from pypdf import PdfReader
from test_interop_dicom import lesion_pixels

from dermfm.interop import fhir_bundle
from dermfm.interop.fhir import ICD10CM


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def check_valid(bundle: dict[str, Any]) -> ClientBundle:
    """Valid R4 (fhir.resources) and readable by a client library (fhirclient); every
    reference resolves inside the bundle."""
    Bundle.model_validate(bundle)
    client = ClientBundle(json.loads(json.dumps(bundle)))
    urls = {e["fullUrl"] for e in bundle["entry"]}
    text = json.dumps(bundle)
    for ref in {part.split('"')[0] for part in text.split('"reference": "')[1:]}:
        assert ref in urls, ref
    return client


@pytest.fixture(scope="module")
def dicom_report(tmp_path_factory: pytest.TempPathFactory, oc_model):
    from dermfm.assistant import Assistant
    from dermfm.assistant.report import PatientDetails

    path = tmp_path_factory.mktemp("fhir") / "derm.dcm"
    ds = make_photo(path, sop_class=DERMOSCOPIC, pixels=[lesion_pixels()], age="061Y")
    assistant = Assistant(oc_model, calibration=False, skin_reference=False, adapter=False)
    report = assistant.consult(path, "Is this worrying?", PatientDetails(site="forearm"))
    assert report.status == "complete"
    return report, ds


def test_a_dicom_consultation_is_a_valid_bundle(dicom_report) -> None:
    report, ds = dicom_report
    bundle = fhir_bundle(report)
    client = check_valid(bundle)
    assert client.entry[0].resource.resource_type == "DiagnosticReport"
    (diagnostic,) = resources(bundle, "DiagnosticReport")
    assert diagnostic["status"] == "preliminary"
    assert report.narrative.summary in diagnostic["conclusion"]
    # no prediction set (no calibration): the leading candidate is the coded conclusion
    top = report.differential.candidates[0]
    assert diagnostic["conclusionCode"][0]["coding"][0] == {
        "system": ICD10CM,
        "code": top.icd10cm,
        "display": top.name,
    }
    # the PDF report
    (form,) = diagnostic["presentedForm"]
    pdf = base64.b64decode(form["data"])
    assert form["contentType"] == "application/pdf" and pdf.startswith(b"%PDF")
    assert top.name in "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    # observations: age, every candidate (probability with its kind), every concept
    observations = resources(bundle, "Observation")
    assert len(observations) == 1 + len(report.differential.candidates) + len(
        report.characteristics
    )
    assert len(diagnostic["result"]) == len(observations)
    by_text = {o["code"].get("text"): o for o in observations}
    first = by_text[top.name]
    assert first["valueQuantity"]["value"] == pytest.approx(top.probability, abs=1e-6)
    assert first["method"]["text"] == report.differential.probability_kind
    age = [o for o in observations if o["code"]["coding"][0].get("code") == "30525-0"]
    assert age[0]["valueQuantity"]["value"] == 61
    # the image: an ImagingStudy with the source's UIDs, linked from the report
    (study,) = resources(bundle, "ImagingStudy")
    assert study["identifier"][0]["value"] == f"urn:oid:{ds.StudyInstanceUID}"
    assert study["series"][0]["uid"] == ds.SeriesInstanceUID
    assert study["series"][0]["instance"][0]["uid"] == ds.SOPInstanceUID
    assert diagnostic["imagingStudy"][0]["reference"] in {e["fullUrl"] for e in bundle["entry"]}
    # the Patient: what the user gave (the file's sex), nothing identifying
    (patient,) = resources(bundle, "Patient")
    assert set(patient) == {"resourceType", "id", "gender"} and patient["gender"] == "female"
    text = json.dumps(bundle)
    assert PATIENT_NAME not in text and PATIENT_ID not in text and "Janet" not in text


def test_the_prediction_set_is_the_coded_conclusion(sample_report) -> None:
    d = sample_report.differential
    codes = {"melanoma": "C43.9", "melanocytic_nevus": "D22.9", "seborrheic_keratosis": "L82.1"}
    candidates = [c.model_copy(update={"icd10cm": codes[c.node]}) for c in d.candidates]
    report = sample_report.model_copy(
        update={"differential": d.model_copy(update={"candidates": candidates})}
    )
    bundle = fhir_bundle(report, pdf=b"%PDF-1.4\n%%EOF")
    check_valid(bundle)
    (diagnostic,) = resources(bundle, "DiagnosticReport")
    assert [c["coding"][0]["code"] for c in diagnostic["conclusionCode"]] == ["C43.9", "D22.9"]
    in_set = [
        o
        for o in resources(bundle, "Observation")
        if any(c.get("valueBoolean") for c in o.get("component", []))
    ]
    assert len(in_set) == 2
    # a photo (not DICOM) is a Media resource named by its file name only
    (media,) = resources(bundle, "Media")
    assert media["content"]["title"] == "lesion.jpg" and diagnostic["media"]
    (patient,) = resources(bundle, "Patient")
    assert set(patient) == {"resourceType", "id"}  # no sex given: nothing


def test_consult_writes_the_bundle(tmp_path: Path, tiny_open_clip: Path) -> None:
    from typer.testing import CliRunner

    from dermfm.cli import app

    path = tmp_path / "derm.dcm"
    make_photo(path, pixels=[lesion_pixels()])
    target = tmp_path / "out" / "bundle.json"
    result = CliRunner().invoke(
        app, ["consult", str(path), "--model", str(tiny_open_clip), "--fhir", str(target)]
    )
    assert result.exit_code == 0, result.output
    bundle = json.loads(target.read_text())
    check_valid(bundle)
    assert resources(bundle, "DiagnosticReport")[0]["presentedForm"][0]["data"]
    again = CliRunner().invoke(
        app, ["consult", str(path), "--model", str(tiny_open_clip), "--fhir", str(target)]
    )
    assert again.exit_code == 2 and "exists" in again.output
