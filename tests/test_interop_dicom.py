"""DICOM input (issue 16, part 1): every transfer syntax and colour space decodes to the right
RGB pixels, a multi-frame object is one result per frame, bad DICOM gets the same one-line error
as a bad JPEG, patient context and modality come from the file, and no identifying tag reaches a
log, a case store or the server's image store. The DICOM files are made here with pydicom."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from dicom_samples import (
    BIRTH_DATE,
    COLOURS,
    DERMOSCOPIC,
    PATIENT_ID,
    PATIENT_NAME,
    make_photo,
)
from PIL import Image

import dermfm
from dermfm.errors import ImageError
from dermfm.io import expand_inputs, load_image, read_dicom_context
from dermfm.io.images import decode_image_bytes

SECRETS = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "Janet", "ACC-SECRET-9")
EXAMPLE = Path(dermfm.__file__).parent / "examples" / "synthetic_lesion.jpg"


def lesion_pixels() -> np.ndarray:
    """The packaged synthetic lesion photo (passes the assistant's quality checks)."""
    with Image.open(EXAMPLE) as im:
        return np.asarray(im.convert("RGB").resize((224, 224)))


@pytest.mark.parametrize(
    ("syntax", "photometric", "tolerance"),
    [
        ("jpeg", None, 4),  # JPEG baseline, YBR_FULL_422 (lossy: a few levels off)
        ("j2k", None, 0),  # JPEG 2000 lossless
        ("rle", None, 0),  # RLE lossless
        ("native", "RGB", 0),
        ("native", "YBR_FULL", 2),  # YBR -> RGB rounding
        ("native", "PALETTE COLOR", 0),
    ],
)
def test_each_syntax_and_colour_space_decodes_to_the_right_colours(
    tmp_path: Path, syntax: str, photometric: str | None, tolerance: int
) -> None:
    path = tmp_path / "photo.dcm"
    make_photo(path, syntax=syntax, photometric=photometric)
    rgb = np.asarray(load_image(path), dtype=int)
    assert rgb.shape == (64, 64, 3)
    left, right = COLOURS[0]
    # away from the edge between the halves, where lossy codecs blur
    assert np.abs(rgb[:, 4:24] - np.array(left)).max() <= tolerance
    assert np.abs(rgb[:, 40:60] - np.array(right)).max() <= tolerance
    # the same through bytes (uploads), and a file without a suffix is recognised too
    same = np.asarray(decode_image_bytes(path.read_bytes(), "upload"), dtype=int)
    assert np.array_equal(same, rgb)
    bare = tmp_path / "1.2.840.99"
    bare.write_bytes(path.read_bytes())
    assert np.array_equal(np.asarray(load_image(bare), dtype=int), rgb)


def test_a_multi_frame_object_gives_one_result_per_frame(tmp_path: Path, oc_model) -> None:
    path = tmp_path / "series.dcm"
    make_photo(path, syntax="rle", frames=2)
    still = tmp_path / "still.dcm"
    make_photo(still, syntax="jpeg")
    inputs = expand_inputs([tmp_path])
    assert [str(i) for i in inputs] == [f"{path}#frame=1", f"{path}#frame=2", str(still)]
    frames = [np.asarray(load_image(f)) for f in inputs[:2]]
    assert tuple(frames[1][5, 5]) == COLOURS[1][0] and tuple(frames[0][5, 5]) == COLOURS[0][0]
    # the Python API: one multi-frame file gives a list, one diagnosis per frame
    results = dermfm.diagnose(path, model=oc_model, labels="ham7", adapter=False)
    assert isinstance(results, list) and [r.source for r in results] == [str(i) for i in inputs[:2]]
    assert all(r.ok for r in results)
    assert results[0].predictions[0].probability != results[1].predictions[0].probability
    # loading the whole file as one image is refused, naming the frames
    with pytest.raises(ImageError, match="2 frames"):
        load_image(path)
    # frames have their own identity (caches, index de-duplication)
    from dermfm.io import image_digest

    assert len({image_digest(i) for i in inputs[:2]} | {image_digest(path)}) == 3
    # a retrieval index holds one item per frame
    _index, report = dermfm.Index.build(tmp_path / "idx", tmp_path, model=oc_model)
    assert report.added == 3 and not report.errors


def _no_pixels(path: Path) -> None:
    ds = make_photo(None, syntax="native")
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)


def _unsupported(path: Path) -> None:
    from pydicom.encaps import encapsulate

    ds = make_photo(None, syntax="jpeg")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(200)])
    ds.save_as(path, enforce_file_format=True)


def _truncated(path: Path) -> None:
    make_photo(path, syntax="native")
    path.write_bytes(path.read_bytes()[:-5000])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_no_pixels, "has no pixel data"),
        (_unsupported, "unsupported DICOM transfer syntax MPEG2"),
        (_truncated, "truncated or corrupt"),
    ],
)
def test_bad_dicom_gets_one_clear_line_and_the_batch_goes_on(
    tmp_path: Path, oc_model, make, reason: str
) -> None:
    bad = tmp_path / "bad.dcm"
    make(bad)
    with pytest.raises(ImageError) as caught:
        load_image(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and reason in message and "\n" not in message
    assert not any(s in message for s in SECRETS)
    good = tmp_path / "good.dcm"
    make_photo(good)
    results = dermfm.diagnose([bad, good], model=oc_model, labels="ham7", adapter=False)
    assert reason in (results[0].error or "") and results[1].ok


def test_patient_context_and_modality_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "derm.dcm"
    make_photo(path, sop_class=DERMOSCOPIC, age="067Y", sex="M", body_part="FOREARM")
    context = read_dicom_context(path)
    assert (context.age, context.sex, context.site, context.modality) == (
        67,
        "male",
        "forearm",
        "dermoscopy",
    )
    assert context.sop_class == "Dermoscopic Photography Image Storage"
    # the Anatomic Region Sequence wins over Body Part Examined; months are 0 years
    make_photo(path, age="010M", sex=None, body_part="LEG", region="Skin of back")
    context = read_dicom_context(path)
    assert (context.age, context.sex, context.site, context.modality) == (
        0,
        None,
        "Skin of back",
        "clinical",
    )
    # a secondary capture says nothing about the modality
    make_photo(path, sop_class="1.2.840.10008.5.1.4.1.1.7", age=None, body_part=None)
    context = read_dicom_context(path)
    assert context.modality is None and context.age is None and context.site is None


def test_a_consultation_takes_the_patient_context_and_keeps_no_tag(
    tmp_path: Path, oc_model, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from dermfm.assistant import Assistant
    from dermfm.assistant.conversation import CaseStore, Consultation
    from dermfm.assistant.report import PatientDetails

    path = tmp_path / "derm.dcm"
    ds = make_photo(
        path, sop_class=DERMOSCOPIC, pixels=[lesion_pixels()], body_part="ARM", age="052Y"
    )
    # an invalid value: reading it, pydicom would warn and log, quoting it
    from pydicom import config

    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.PatientAge = "52 years " + PATIENT_NAME
        ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode
    assistant = Assistant(oc_model, calibration=False, skin_reference=False, adapter=False)
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # pydicom warned about the value while the test wrote it
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = CaseStore(tmp_path / "cases")
        chat = Consultation.start(
            assistant, path, PatientDetails(age=50), store=store
        )  # the user's age wins
        # a re-consultation (skin type changes the limitations, not the prompts)
        assert chat.update(chat.case.patient.model_copy(update={"skin_type": "II"}))
    report = chat.report
    assert report.status == "complete"
    assert (report.patient.age, report.patient.sex, report.patient.site) == (
        50,
        "female",
        "upper extremity",
    )
    assert report.modality is not None and report.modality.label == "dermoscopy"
    assert report.modality.given
    assert report.dicom is not None and report.dicom.study_uid == ds.StudyInstanceUID
    assert report.dicom.instance_uid == ds.SOPInstanceUID
    assert all(r.dicom == report.dicom for r in chat.case.reports)  # re-consults keep it
    # the case folder holds the pixels as PNG and no tag
    folder = store.folder(chat.case.case_id)
    assert sorted(p.name for p in folder.iterdir()) == ["case.json", "image.png"]
    stored = b"".join(p.read_bytes() for p in folder.iterdir())
    heard = caplog.text + "".join(str(w.message) for w in caught) + "".join(capfd.readouterr())
    for secret in SECRETS:
        assert secret.encode() not in stored
        assert secret not in heard


@contextmanager
def signed_in_server(data: Path, user: str, **settings: Any) -> Iterator[tuple[httpx.Client, Path]]:
    """A server (in this process) with ``settings`` and a client signed in as ``user``."""
    from live_server import start_server

    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

    url, server, thread = start_server(data, **settings)
    try:
        database = Database(ServerSettings(data_dir=data).url)
        database.create_user(user, "clinician", f"a long pass phrase of {user}")
        token = database.create_token(user, days=1, kind="api")[0]
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            yield client, data
        database.close()
    finally:
        server.should_exit = True
        thread.join()


def test_rest_uploads_accept_dicom_and_store_no_tag(tmp_path: Path, tiny_open_clip: Path) -> None:
    model = str(tiny_open_clip)
    with signed_in_server(tmp_path / "server", "ann", model=model, batch_max=1) as (client, data):
        multi = io.BytesIO()
        make_photo(None, syntax="jpeg", frames=2).save_as(multi, enforce_file_format=True)
        files = {"image": ("series.dcm", multi.getvalue(), "application/dicom")}
        answer = client.post("/api/diagnose", params={"labels": "ham7"}, files=files)
        assert answer.status_code == 200, answer.text
        assert [r["source"] for r in answer.json()] == ["series.dcm#frame=1", "series.dcm#frame=2"]
        answer = client.post("/api/cases", files=files)
        assert answer.status_code == 422 and "2 frames" in answer.text
        answer = client.post("/api/cases", files=files, data={"frame": "2", "sex": "male"})
        assert answer.status_code == 201, answer.text
        report = answer.json()["report"]
        assert report["patient"]["age"] == 45 and report["patient"]["sex"] == "male"
        assert report["patient"]["site"] == "back" and report["dicom"]["frame"] == 2
        assert answer.json()["case"]["source"] == "series.dcm#frame=2"
        cut = multi.getvalue()[:600]
        answer = client.post("/api/concepts", files={"image": ("cut.dcm", cut)})
        assert answer.status_code == 422 and answer.json()["error"]["message"].startswith("cut.dcm")
        stored = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
        assert stored and not any(s.encode() in stored for s in SECRETS)


def test_evaluation_embeds_a_dicom_record_like_its_pixels(tmp_path: Path, oc_model) -> None:
    """``dermfm eval`` (and adapters, SAE training) embed records through ``embed_records``: a
    lossless DICOM photo gives the vector of the same pixels stored as PNG."""
    from dermfm.data import Record
    from dermfm.evaluate.tasks import embed_records

    make_photo(tmp_path / "lesion.dcm", syntax="native")
    pixels = np.asarray(dermfm.io.load_image(tmp_path / "lesion.dcm"))
    Image.fromarray(pixels).save(tmp_path / "lesion.png")
    names = ("lesion.dcm", "lesion.png")
    records = [Record(image=str(tmp_path / n), label="melanoma") for n in names]
    split = embed_records(oc_model, records)
    assert len(split.records) == 2
    assert torch.allclose(split.vectors[0], split.vectors[1], atol=1e-6)
