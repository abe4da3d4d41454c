"""Decoding of camera-size photos: the default is the reference (a plain PIL decode at full
resolution); the fast reduced-scale JPEG decode is an explicit option and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

import dermfm
from dermfm.zeroshot import ZeroShotClassifier


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000x3000 JPEG of skin with a pigmented lesion, stored sideways with an EXIF
    orientation tag as phones do."""
    rng = np.random.default_rng(7)
    base = np.array([198, 150, 126], np.float32)
    noise = rng.normal(0, 1, (375, 500, 1)).astype(np.float32)
    skin = np.clip(base + 14 * noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(skin).resize((4000, 3000), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    draw.ellipse((1500, 1000, 2500, 1900), fill=(92, 58, 44))
    draw.ellipse((1800, 1250, 2150, 1600), fill=(60, 38, 30))
    img = img.filter(ImageFilter.GaussianBlur(6))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path_factory.mktemp("phone") / "IMG_0001.jpg"
    img.save(path, quality=92, exif=exif)
    return path


@pytest.fixture(scope="module")
def bundled() -> dermfm.DermModel:
    return dermfm.load_model("dermfm-bundled")


def _reference_probs(model: dermfm.DermModel, image: Image.Image) -> torch.Tensor:
    clf = ZeroShotClassifier(model, "ham7", adapter=False)
    with torch.inference_mode():
        return clf.predict_proba(model.encode_images(model.preprocess(image)[None]))[0]


def test_default_decode_equals_a_plain_pil_pipeline(bundled, phone_photo: Path) -> None:
    reference = ImageOps.exif_transpose(Image.open(phone_photo)).convert("RGB")
    assert reference.size == (3000, 4000)  # the orientation tag was applied
    expected = _reference_probs(bundled, reference)
    result = dermfm.diagnose(phone_photo, model=bundled, labels="ham7", adapter=False, top_k=7)
    assert result.ok and not result.fast_decode
    got = {p.label: p.probability for p in result.predictions}
    names = dermfm.load_label_set("ham7").labels
    np.testing.assert_allclose([got[n] for n in names], expected.numpy(), atol=1e-6)


def test_every_embedding_path_decodes_at_full_resolution_by_default(
    bundled, phone_photo: Path
) -> None:
    # concepts, retrieval and the SAE embed through embed_images with its defaults
    reference = ImageOps.exif_transpose(Image.open(phone_photo)).convert("RGB")
    with torch.inference_mode():
        expected = bundled.encode_images(bundled.preprocess(reference)[None])[0]
    got = bundled.embed_images([phone_photo]).vectors[0]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
    fast = bundled.embed_images([phone_photo], fast_decode=True).vectors[0]
    assert float((fast - expected).abs().max()) > 1e-4


def test_fast_decode_is_the_reduced_scale_jpeg_decode(bundled, phone_photo: Path) -> None:
    # the fast path decodes at the smallest JPEG scale keeping twice the model input
    draft = Image.open(phone_photo)
    draft.draft("RGB", (2 * bundled.image_size * 4 // 3, 2 * bundled.image_size))
    assert draft.size == (1000, 750)  # 1/4 scale of 4000x3000
    expected = _reference_probs(bundled, ImageOps.exif_transpose(draft).convert("RGB"))
    exact = dermfm.diagnose(phone_photo, model=bundled, labels="ham7", adapter=False, top_k=7)
    fast = dermfm.diagnose(
        phone_photo, model=bundled, labels="ham7", adapter=False, top_k=7, fast_decode=True
    )
    assert fast.ok and fast.fast_decode and fast.to_dict()["fast_decode"] is True
    names = dermfm.load_label_set("ham7").labels
    got = {p.label: p.probability for p in fast.predictions}
    np.testing.assert_allclose([got[n] for n in names], expected.numpy(), atol=1e-6)
    # the two decodes differ, but only a little: the same classes lead
    exact_probs = {p.label: p.probability for p in exact.predictions}
    differences = [abs(exact_probs[n] - got[n]) for n in names]
    assert 0 < max(differences) < 0.05
    assert exact.predictions[0].label == fast.predictions[0].label


def test_cli_diagnose_takes_fast_decode(phone_photo: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dermfm.cli import app

    run = CliRunner().invoke(
        app, ["diagnose", str(phone_photo), "-l", "ham7", "--no-adapter", "--json"]
    )
    fast = CliRunner().invoke(
        app, ["diagnose", str(phone_photo), "-l", "ham7", "--no-adapter", "--fast-decode", "--json"]
    )
    assert run.exit_code == 0 and fast.exit_code == 0, run.output + fast.output
    assert json.loads(run.stdout)[0]["fast_decode"] is False
    assert json.loads(fast.stdout)[0]["fast_decode"] is True
