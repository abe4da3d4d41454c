"""Image quality measures and problems, on real photos and degraded copies of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dermfm.assistant.quality import (
    SkinReference,
    check_quality,
    image_measures,
    pixel_problems,
    quality_settings,
)


@pytest.fixture(scope="module")
def photo(real_images) -> Image.Image:
    """A real clinical photo (DermNet NZ)."""
    path = next(p for p, _ in real_images if "dermnet_nz" in str(p))
    return Image.open(path).convert("RGB")


def test_measures_follow_their_definitions(photo) -> None:
    m = image_measures(photo)
    grey = np.asarray(photo.convert("L").resize((224, 224), Image.Resampling.BILINEAR), float)
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    assert m["sharpness"] == pytest.approx(lap.var())
    assert m["brightness"] == pytest.approx(grey.mean() / 255)
    assert m["min_side"] == min(photo.size)


def test_real_photo_passes_and_degraded_copies_fail(photo) -> None:
    assert pixel_problems(image_measures(photo), {"sharpness_min": 4.17}) == []
    cases = {
        "blurry": photo.filter(ImageFilter.GaussianBlur(6)),
        "underexposed": photo.point(lambda v: v // 8),
        "overexposed": photo.point(lambda v: min(255, v * 4 + 120)),
        "greyscale": photo.convert("L").convert("RGB"),
        "too_small": photo.resize((40, 30)),
        "blank": Image.new("RGB", photo.size, (180, 140, 120)),
    }
    for kind, image in cases.items():
        kinds = [p.kind for p in pixel_problems(image_measures(image), {"sharpness_min": 4.17})]
        assert kind in kinds, (kind, kinds)


def test_problems_carry_value_threshold_and_advice(photo) -> None:
    dark = photo.point(lambda v: v // 8)
    problem = next(p for p in check_quality(dark).problems if p.kind == "underexposed")
    assert problem.value < problem.threshold
    assert problem.message == quality_settings()["messages"]["underexposed"]


def test_without_a_reference_relevance_is_not_checked(photo) -> None:
    result = check_quality(photo)
    assert result.usable and not result.relevance_checked
    assert "relevance" not in result.measures


def test_skin_reference_scores_are_knn_means_and_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    refs = torch.nn.functional.normalize(torch.randn(30, 1280, generator=gen), dim=-1)
    ref = SkinReference(refs, threshold=0.3, k=3, info={"sources": ["test"]})
    query = torch.nn.functional.normalize(torch.randn(2, 1280, generator=gen), dim=-1)
    sims = query @ refs.T
    expected = torch.sort(sims, dim=1, descending=True).values[:, :3].mean(dim=1)
    assert torch.allclose(ref.scores(query), expected, atol=1e-6)
    saved = SkinReference.load(ref.save(tmp_path / "ref.safetensors"))
    assert saved.k == 3 and saved.threshold == pytest.approx(0.3)
    assert saved.info == {"sources": ["test"]}
    assert torch.allclose(saved.features, refs, atol=1e-3)


def test_packaged_reference_accepts_skin_and_refuses_objects(real_images) -> None:
    skimage = pytest.importorskip("skimage")
    ref = SkinReference.load()
    assert ref.info["n_reference"] >= 1000
    skin = [Image.open(p).convert("RGB") for p, _ in real_images]
    passed = (ref.scores(ref.embed(skin)) >= ref.threshold).float().mean()
    assert passed >= 0.9
    folder = Path(skimage.__file__).parent / "data"
    objects = [
        Image.open(folder / n).convert("RGB")
        for n in ("coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png")
    ]
    assert (ref.scores(ref.embed(objects)) < ref.threshold).all()


def test_bad_reference_file_is_named(tmp_path: Path) -> None:
    from dermfm.errors import ModelNotAvailableError

    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelNotAvailableError, match=r"junk\.safetensors"):
        SkinReference.load(bad)
