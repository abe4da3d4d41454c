"""DICOMweb with a real PACS (issue 16, part 4): Orthanc with its DICOMweb plugin (Debian's
``orthanc`` and ``orthanc-dicomweb``), started here on 127.0.0.1 with a free port and a
temporary storage folder. Generated DICOM photos are uploaded (STOW-RS), a study is consulted
(QIDO-RS, WADO-RS), and the DICOM SR and Encapsulated PDF stored back are read from Orthanc and
checked: content, codes, and references to the source study and images."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dicom_samples import DERMOSCOPIC, PATIENT_ID, PATIENT_NAME, make_photo
from live_server import free_port, stop_process
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pypdf import PdfReader
from test_interop_dicom import lesion_pixels, signed_in_server

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DICOMweb base URL of a fresh Orthanc on loopback (its storage in a temp folder)."""
    if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip(
            "Orthanc or its DICOMweb plugin missing (apt-get install orthanc orthanc-dicomweb)"
        )
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "dermfm-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpThreadsCount": 4,
        "StorageCompression": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "Orthanc did not start:\n" + (folder / "orthanc.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        yield f"{base}/dicom-web"
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)


def upload_study(pacs_url: str) -> tuple[str, list[Any]]:
    """A study of a dermoscopic photo (JPEG) and a two-frame clinical photo (RLE), stored in
    the PACS; returns its UID and the datasets."""
    from dermfm.interop.dicomweb import Pacs

    study = generate_uid()
    pixels = lesion_pixels()
    datasets = [
        make_photo(None, sop_class=DERMOSCOPIC, pixels=[pixels], study_uid=study),
        make_photo(
            None,
            syntax="rle",
            pixels=[pixels, np.ascontiguousarray(pixels[:, ::-1])],
            study_uid=study,
        ),
    ]
    for ds in datasets[1:]:  # the same patient, the same study
        ds.SeriesInstanceUID = generate_uid()
    Pacs(pacs_url).store(datasets)
    return study, datasets


def content(items: Any) -> Iterator[Any]:
    """Every content item of an SR content tree, depth first."""
    for item in items:
        yield item
        yield from content(item.get("ContentSequence", []))


def test_a_study_goes_from_the_pacs_and_its_results_come_back(orthanc: str, oc_model) -> None:
    from dermfm.assistant import Assistant
    from dermfm.interop.dicomweb import ENCAPSULATED_PDF, Pacs, consult_study
    from dermfm.io import expand_frames

    study, sources = upload_study(orthanc)
    pacs = Pacs(orthanc)
    assistant = Assistant(oc_model, calibration=False, skin_reference=False, adapter=False)
    results = consult_study(
        lambda file: [assistant.consult(f) for f in expand_frames([file])],
        pacs,
        study,
        store_back=True,
    )
    # one report per photo and per frame, each with the source's context and UIDs
    assert len(results) == 3 and all(r.report.status == "complete" for r in results)
    by_instance = {str(ds.SOPInstanceUID): ds for ds in sources}
    frames = sorted((r.report.dicom.instance_uid, r.report.dicom.frame) for r in results)
    single, multi = str(sources[0].SOPInstanceUID), str(sources[1].SOPInstanceUID)
    assert frames == sorted([(single, None), (multi, 1), (multi, 2)])
    first = next(r.report for r in results if r.report.dicom.instance_uid == single)
    assert first.modality.label == "dermoscopy" and first.modality.given
    assert first.patient.age == 45 and first.patient.site == "back"
    assert all(r.report.source.startswith(f"dicomweb:{study}/") for r in results)
    # what the PACS now holds: the photos, and an SR and a PDF per report, in the same study
    listed = pacs.instances(study)
    kinds = [i["sop_class"] for i in listed]
    assert kinds.count(COMPREHENSIVE_SR) == 3 and kinds.count(ENCAPSULATED_PDF) == 3
    for result in results:
        report, (sr_uid, pdf_uid) = result.report, result.stored
        source = by_instance[report.dicom.instance_uid]
        located = {i["instance"]: i["series"] for i in listed}
        sr = pacs.retrieve(study, located[sr_uid], sr_uid)
        assert sr.StudyInstanceUID == study and sr.PatientID == PATIENT_ID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        items = list(content(sr.ContentSequence))
        images = [i for i in items if i.ValueType == "IMAGE"]
        image_ref = images[0].ReferencedSOPSequence[0]
        assert image_ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if report.dicom.frame:
            value = image_ref.ReferencedFrameNumber
            numbers = [int(v) for v in value] if isinstance(value, MultiValue) else [int(value)]
            assert numbers == [report.dicom.frame]
        codes = [
            (i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
            for i in items
            if i.ValueType == "CODE"
        ]
        expected = [c.icd10cm for c in report.differential.candidates]
        assert [c for c, _ in codes] == expected and {s for _, s in codes} == {"I10C"}
        numbers = [
            float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"
        ]
        assert numbers == pytest.approx(
            [c.probability for c in report.differential.candidates], abs=1e-5
        )
        texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
        assert report.differential.probability_kind in texts and report.narrative.summary in texts
        pdf = pacs.retrieve(study, located[pdf_uid], pdf_uid)
        assert pdf.SOPClassUID == ENCAPSULATED_PDF and pdf.StudyInstanceUID == study
        assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        document = bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)]
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(document)).pages)
        assert report.differential.candidates[0].name in text
        assert PATIENT_NAME not in text  # the report never names the patient


def test_the_cli_consults_a_study(orthanc: str, tiny_open_clip: Path) -> None:
    from typer.testing import CliRunner

    from dermfm.cli import app

    study, _ = upload_study(orthanc)
    runner = CliRunner()
    model = ["--model", str(tiny_open_clip)]
    result = runner.invoke(
        app, ["consult", "--dicomweb", orthanc, "--study", study, *model, "--json"]
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout[result.stdout.index("[") :])
    assert len(reports) == 3
    assert {r["dicom"]["study_uid"] for r in reports} == {study}
    assert PATIENT_NAME not in result.output and PATIENT_ID not in result.output
    # a value that is no UID never reaches a URL; an unknown study is one clear line
    for uid, message in (("1.2.3/../../system", "not a DICOM UID"), ("1.2.3.4", "no study")):
        bad = runner.invoke(app, ["consult", "--dicomweb", orthanc, "--study", uid, *model])
        assert bad.exit_code == 2 and message in bad.output
    refused = runner.invoke(app, ["consult", "x.dcm", "--store-back"])
    assert refused.exit_code == 2 and "--store-back needs --dicomweb" in refused.output


@pytest.mark.slow  # a server with the tiny model: about a minute on a busy 2-core machine
def test_the_server_opens_a_study_of_its_pacs(
    orthanc: str, tmp_path: Path, tiny_open_clip: Path
) -> None:
    study, _ = upload_study(orthanc)
    model = str(tiny_open_clip)
    with signed_in_server(tmp_path / "server", "pat", model=model, pacs_url=orthanc) as (
        client,
        data,
    ):
        answer = client.post(f"/api/pacs/studies/{study}")
        assert answer.status_code == 201, answer.text
        cases = answer.json()["cases"]
        assert len(cases) == 3
        case_id = cases[0]["case"]["case_id"]
        case = client.get(f"/api/cases/{case_id}").json()
        assert case["reports"][-1]["dicom"]["study_uid"] == study
        bundle = client.get(f"/api/cases/{case_id}/fhir")
        assert bundle.status_code == 200 and bundle.json()["resourceType"] == "Bundle"
        assert client.post("/api/pacs/studies/1.2.3%2F..%2Fsystem").status_code in (404, 422)
        assert client.post("/api/pacs/studies/1.2.3.4").status_code == 502
        stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
        assert PATIENT_NAME.encode() not in stored and PATIENT_ID.encode() not in stored
