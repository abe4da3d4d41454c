"""Artifact suppression: projection, zeroing, the suppressor file, finding artifact latents,
synthetic artifacts on real HAM10000 images, biased splits, and a planted shortcut removed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermfm.data.manifest import Record
from dermfm.errors import KnowledgeError, SourceError
from dermfm.evaluate.probe import LinearProbe
from dermfm.interpret.artifacts import (
    ArtifactSuppressor,
    LatentScore,
    by_contrast,
    by_names,
    project_out,
    zero_latents,
)
from dermfm.interpret.synthetic import (
    ArtifactKind,
    add_artifact,
    artifact_kinds,
    artifact_terms,
    draw_hair,
    shortcut_image,
    shortcut_split,
)
from dermfm.io import load_image
from dermfm.knowledge import load_concepts

# --------------------------------------------------------------------------- project_out


def reference_projection(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``x - x D^T (D D^T)^-1 D``: the projection off the span of full-rank rows ``D``."""
    return x - x @ d.T @ np.linalg.solve(d @ d.T, d)


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(5, 16))
    directions[1] += 2.0 * directions[0]  # far from orthogonal
    return rng.normal(size=(40, 16)), directions


def test_project_out_removes_every_direction(vectors: tuple[np.ndarray, np.ndarray]) -> None:
    x, d = vectors
    projected = project_out(x, d, normalize=False)
    np.testing.assert_allclose(projected @ d.T, 0.0, atol=1e-12)
    np.testing.assert_allclose(projected, reference_projection(x, d), atol=1e-12)
    unit = project_out(x, d)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)
    np.testing.assert_allclose(
        unit, projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-12
    )


def test_project_out_keeps_vectors_orthogonal_to_the_span(
    vectors: tuple[np.ndarray, np.ndarray],
) -> None:
    x, d = vectors
    orthogonal = reference_projection(x, d)
    np.testing.assert_allclose(project_out(orthogonal, d, normalize=False), orthogonal, atol=1e-12)


def test_project_out_handles_duplicate_and_dependent_directions(
    vectors: tuple[np.ndarray, np.ndarray],
) -> None:
    x, d = vectors
    redundant = np.vstack([d, d[0], 3.0 * d[2] - d[4], np.zeros(16), -d[1]])
    np.testing.assert_allclose(
        project_out(x, redundant, normalize=False), reference_projection(x, d), atol=1e-10
    )
    # a single direction may be a 1-D vector
    np.testing.assert_allclose(project_out(x, d[0]), project_out(x, d[:1]))


def test_project_out_keeps_torch_type_and_numpy_dtype(
    vectors: tuple[np.ndarray, np.ndarray],
) -> None:
    import torch

    x, d = vectors
    out = project_out(torch.from_numpy(x).float(), torch.from_numpy(d))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), project_out(x, d), atol=1e-6)
    assert project_out(x.astype(np.float32), d).dtype == np.float32
    with pytest.raises(ValueError, match="15 dimensions but the embeddings have 16"):
        project_out(x, d[:, :15])
    with pytest.raises(ValueError, match="NaN"):
        project_out(np.full((2, 16), np.nan), d)


def test_zero_latents_on_numpy_and_torch() -> None:
    import torch

    acts = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    out = zero_latents(acts, [1, 3])
    assert out.tolist() == [[1, 0, 3, 0], [5, 0, 7, 0], [9, 0, 11, 0]]
    assert acts[0, 1] == 2  # a copy
    tensor = zero_latents(torch.from_numpy(acts), {2})
    assert isinstance(tensor, torch.Tensor) and tensor[:, 2].abs().sum() == 0
    assert tensor[:, [0, 1, 3]].tolist() == acts[:, [0, 1, 3]].tolist()
    with pytest.raises(ValueError, match=r"out of range: \[4\]"):
        zero_latents(acts, [4])


# --------------------------------------------------------------------------- suppressor


def test_suppressor_json_round_trip_and_transform(
    vectors: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, d = vectors
    found = {
        "ruler": [LatentScore(3, 4.2), LatentScore(1, 2.0)],
        "hair": [LatentScore(3, 1.5), LatentScore(0, 1.1)],
    }
    suppressor = ArtifactSuppressor.from_latents(found, d)
    assert suppressor.latents == (3, 1, 0)
    assert suppressor.artifacts == ("ruler", "ruler", "hair")  # latent 3 kept with its first kind
    np.testing.assert_array_equal(suppressor.directions, d[[3, 1, 0]])

    restored = ArtifactSuppressor.from_dict(json.loads(json.dumps(suppressor.to_dict())))
    assert restored.latents == suppressor.latents and restored.artifacts == suppressor.artifacts
    np.testing.assert_array_equal(restored.directions, suppressor.directions)
    loaded = ArtifactSuppressor.load(suppressor.save(tmp_path / "artifacts.json"))
    np.testing.assert_array_equal(loaded.directions, suppressor.directions)

    np.testing.assert_allclose(loaded.transform(x), project_out(x, d[[0, 1, 3]]), atol=1e-12)
    acts = np.ones((2, 5))
    assert loaded.zero_activations(acts).tolist() == [[0, 0, 1, 0, 1]] * 2


def test_suppressor_rejects_bad_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to suppress"):
        ArtifactSuppressor.from_latents({"ruler": []}, np.eye(3))
    with pytest.raises(ValueError, match="lacks"):
        ArtifactSuppressor.from_dict({"latents": [0]})
    with pytest.raises(ValueError, match="as many latents"):
        ArtifactSuppressor(np.eye(3)[:2], (0,), ("ruler",))
    with pytest.raises(ValueError, match="repeat"):
        ArtifactSuppressor(np.eye(3)[:2], (0, 0), ("ruler", "hair"))
    with pytest.raises(SourceError, match="not found"):
        ArtifactSuppressor.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SourceError, match=r"bad\.json"):
        ArtifactSuppressor.load(bad)


# --------------------------------------------------------------------------- artifacts.yaml


def test_kinds_cover_the_artifact_concepts() -> None:
    kinds = artifact_kinds()
    issue_kinds = {"ruler", "ink", "hair", "dark_corners", "gel_bubbles", "watermark"}
    assert issue_kinds <= set(kinds)
    artifact_concepts = {c.id for c in load_concepts() if c.group == "artifact"}
    linked = [cid for kind in kinds.values() for cid in kind.concepts]
    assert sorted(linked) == sorted(artifact_concepts)  # each concept linked exactly once
    terms = artifact_terms()
    assert terms["scale bar"] == "ruler" and terms["purple pen"] == "ink"
    assert terms["dark circular vignette of the dermoscope"] == "dark_corners"


def test_bad_artifact_files_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "artifacts.yaml"
    path.write_text("artifacts:\n  laser:\n    name: laser\n    concepts: [ruler]\n    draw: {}\n")
    with pytest.raises(KnowledgeError, match=r"artifacts\.yaml: artifact 'laser': no drawing"):
        artifact_kinds(path)
    path.write_text(
        "artifacts:\n  ruler:\n    name: ruler\n    concepts: [asymmetry]\n    draw: {}\n"
    )
    with pytest.raises(KnowledgeError, match="'asymmetry' is not a concept of the 'artifact'"):
        artifact_kinds(path)
    kind = ArtifactKind("hair", "hair", ("hair",), {"width": [2, 1], "colour": [1, 2]}, "x.yaml")
    with pytest.raises(KnowledgeError, match=r"x\.yaml: artifact 'hair': draw\.width must be"):
        kind.span("width")
    with pytest.raises(KnowledgeError, match=r"draw\.colour must be \[r, g, b\]"):
        kind.colour("colour")
    with pytest.raises(KnowledgeError, match=r"missing draw\.bend"):
        kind.number("bend")


# --------------------------------------------------------------------------- finding latents


def test_by_contrast_ranks_latents_by_effect_size() -> None:
    rng = np.random.default_rng(0)
    without = np.maximum(rng.normal(size=(80, 6)), 0)
    with_ = without.copy()
    with_[:, 4] += 1.5  # a strong, consistent rise
    with_[:, 1] += rng.normal(0.3, 1.0, 80).clip(0)  # a weaker, noisy one
    with_[:, 2] -= 0.5  # a fall is never an artifact latent
    found = by_contrast({"ruler": with_, "hair": without}, without, top=2, min_effect=0.3)
    assert [s.latent for s in found["ruler"]] == [4, 1]
    # an independent computation of the first effect (Cohen's d, pooled std)
    pooled = np.sqrt((with_[:, 4].var(ddof=1) + without[:, 4].var(ddof=1)) / 2)
    assert found["ruler"][0].score == pytest.approx(1.5 / pooled)
    assert found["hair"] == []  # no change, nothing found
    assert [s.latent for s in by_contrast({"ruler": with_}, without, min_effect=3.0)["ruler"]] == [
        4
    ]
    # a latent silent without the artifact and constant with it is found, with a finite score
    silent = np.zeros((10, 3))
    lit = silent.copy()
    lit[:, 0] = 1.0
    (score,) = by_contrast({"x": lit}, silent)["x"]
    assert score.latent == 0 and np.isfinite(score.score) and score.score > 1e3
    with pytest.raises(ValueError, match="same images"):
        by_contrast({"ruler": with_[:50]}, without)


def test_by_names_keeps_latents_whose_best_term_is_an_artifact() -> None:
    terms = ["melanoma", "scale bar", "Hair", "blue", "ruler"]
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.2],  # latent 0: melanoma
            [0.1, 0.6, 0.0, 0.0, 0.5],  # latent 1: scale bar -> ruler
            [0.1, 0.0, 0.3, 0.0, 0.0],  # latent 2: hair
            [0.0, 0.0, 0.0, 0.1, 0.7],  # latent 3: ruler
            [0.0, 0.05, 0.0, 0.0, 0.0],  # latent 4: scale bar, weakly
        ]
    )
    found = by_names(scores, terms=terms)
    assert found["ruler"] == [(3, 0.7), (1, 0.6), (4, 0.05)]
    assert found["hair"] == [(2, 0.3)] and found["ink"] == []
    assert by_names(scores, ["ruler"], terms=terms, min_score=0.1, top=1) == {"ruler": [(3, 0.7)]}
    named = {i: list(zip(terms, row.tolist(), strict=True)) for i, row in enumerate(scores)}
    assert by_names(named) == found
    with pytest.raises(ValueError, match="needs terms="):
        by_names(scores)
    with pytest.raises(ValueError, match="unknown artifact kind 'laser'"):
        by_names(scores, ["laser"], terms=terms)


# --------------------------------------------------------------------------- planted shortcut


def biased_set(
    rng: np.random.Generator, n: int, p_biased: float, signal: np.ndarray, artifact: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings = weak class signal + noise (+ a strong artifact on a share of each class:
    ``p_biased`` of class 1, ``1 - p_biased`` of class 0), L2-normalised; and the clean ones."""
    y = rng.integers(0, 2, n)
    base = rng.normal(0.0, 0.25, (n, signal.shape[0])) + np.where(y[:, None] == 1, 0.3, -0.3) * (
        signal
    )
    has = rng.random(n) < np.where(y == 1, p_biased, 1.0 - p_biased)
    with_art = base + 1.2 * has[:, None] * artifact
    norm = np.linalg.norm
    return with_art / norm(with_art, axis=1, keepdims=True), y, base / norm(base, axis=1)[:, None]


def accuracy_gap(train, test_biased, test_clean, directions=None) -> tuple[float, float]:
    """(biased - clean accuracy, clean accuracy) of a probe trained on the biased set."""
    sets = [train, test_biased, test_clean]
    if directions is not None:
        sets = [(project_out(x, directions), y) for x, y in sets]
    probe = LinearProbe(seed=0).fit(*sets[0])
    biased, clean = ((probe.predict(x) == y).mean() for x, y in sets[1:])
    return float(biased - clean), float(clean)


def test_suppression_removes_a_planted_shortcut() -> None:
    rng = np.random.default_rng(0)
    d = 32
    signal, artifact = (v / np.linalg.norm(v) for v in rng.normal(size=(2, d)))
    x_train, y_train, _ = biased_set(rng, 1000, 0.95, signal, artifact)
    x_biased, y_biased, _ = biased_set(rng, 600, 0.95, signal, artifact)
    x_clean, y_clean, _ = biased_set(rng, 600, 0.5, signal, artifact)  # artifact independent
    data = [(x_train, y_train), (x_biased, y_biased), (x_clean, y_clean)]

    gap, clean = accuracy_gap(*data)
    assert gap > 0.15  # the probe learned the artifact

    gap_true, clean_true = accuracy_gap(*data, directions=artifact)
    assert abs(gap_true) < 0.06 and clean_true >= clean

    # a simple sparse code: ReLU of projections on a dictionary holding a noisy copy of the
    # artifact direction among random ones; the contrast of the same images with and without
    # the artifact finds that latent, and projecting off its direction removes the shortcut
    noisy = artifact + 0.3 * rng.normal(size=d) / np.sqrt(d)
    dictionary = np.vstack([rng.normal(size=(6, d)), noisy, rng.normal(size=(6, d)), signal])
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    _, _, clean_images = biased_set(rng, 300, 0.5, signal, artifact)
    drawn = clean_images + 1.2 * artifact
    drawn /= np.linalg.norm(drawn, axis=1, keepdims=True)
    found = by_contrast(
        {"planted": np.maximum(drawn @ dictionary.T, 0)},
        np.maximum(clean_images @ dictionary.T, 0),
        top=1,
    )
    assert [s.latent for s in found["planted"]] == [6]
    suppressor = ArtifactSuppressor.from_latents(found, dictionary)
    gap_found, clean_found = accuracy_gap(*data, directions=suppressor.directions)
    assert gap_found < gap / 2 and clean_found >= clean


# --------------------------------------------------------------------------- synthetic artifacts


def ham_rows(shared_data: Path, n: int, labels: set[str] | None = None) -> list[dict[str, str]]:
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if labels is None or r["label"] in labels]
    return rows[:: max(1, len(rows) // n)][:n]


@pytest.fixture(scope="module")
def ham_images(shared_data: Path) -> list[Image.Image]:
    return [load_image(shared_data / "ham10000" / r["file"]) for r in ham_rows(shared_data, 3)]


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Boolean (h, w) mask of pixels whose colour changed."""
    a = np.asarray(before, dtype=np.int16)
    b = np.asarray(after, dtype=np.int16)
    return np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).max(axis=2) > 0


@pytest.mark.parametrize("kind", list(artifact_kinds()))
def test_every_kind_changes_the_image_deterministically(
    ham_images: list[Image.Image], kind: str
) -> None:
    for img in ham_images:
        out = add_artifact(img, kind, seed=7)
        assert out.size == img.size and out.mode == img.mode
        assert changed(img, out).mean() > 0.01
        assert np.array_equal(np.asarray(add_artifact(img, kind, seed=7)), np.asarray(out))
    if kind not in ("dark_corners", "watermark"):  # these two do not depend on the seed
        img = ham_images[0]
        assert not np.array_equal(np.asarray(add_artifact(img, kind, 8)), np.asarray(out))
    grey = ham_images[0].convert("L")
    assert add_artifact(grey, kind, seed=1).mode == "L"


def drawn(img: Image.Image, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with an artifact as a float array, and the mask of the pixels it changed."""
    out = np.asarray(add_artifact(img, kind, seed), dtype=np.float64)
    return out, changed(img, Image.fromarray(out.astype(np.uint8)))


def test_artifacts_land_where_expected(ham_images: list[Image.Image]) -> None:
    for seed, img in enumerate(ham_images):
        w, h = img.size
        assert w > h  # HAM10000 images are landscape
        pixels = np.asarray(img, dtype=np.float64)
        ys, xs = np.mgrid[0:h, 0:w]
        # the central square, which a centre crop keeps: edge and corner artifacts stay inside
        left, right = (w - h) / 2 - 1, (w + h) / 2
        inside = (xs >= left) & (xs <= right)

        for extra in range(3):
            _, mask = drawn(img, "ruler", 10 * seed + extra)
            top, bottom = ys[mask].max(), h - 1 - ys[mask].min()
            assert min(top, bottom) <= 0.16 * h + 1  # a band along the top or bottom edge
            assert inside[mask].all()

        dark = np.asarray(add_artifact(img, "dark_corners"), dtype=np.float64)
        for rows, cols in ((slice(0, 8), slice(0, 8)), (slice(-8, None), slice(-8, None))):
            assert dark[rows, cols].mean() < 0.2 * pixels[rows, cols].mean()
        x0 = (w - h) // 2
        square_corner = (slice(0, 8), slice(x0, x0 + 8))
        assert dark[square_corner].mean() < 0.2 * pixels[square_corner].mean()
        middle = (slice(h // 2 - 20, h // 2 + 20), slice(w // 2 - 20, w // 2 + 20))
        assert np.array_equal(dark[middle], pixels[middle])

        marked, mask = drawn(img, "watermark", seed)
        assert ys[mask].min() > h / 2 and xs[mask].mean() < w / 2  # the lower-left corner
        assert inside[mask].all()
        assert marked[mask].mean() > pixels[mask].mean()  # light text

        sticker, mask = drawn(img, "sticker", seed)
        assert inside[mask].all()
        r, g, b = sticker[mask].T
        assert ((r > g) & (g > b)).mean() > 0.9  # orange

        inked, mask = drawn(img, "ink", seed)
        r, g, b = inked[mask].T
        assert ((b > g) & (r > g)).mean() > 0.9  # purple strokes

        hairy, mask = drawn(img, "hair", seed)
        assert hairy[mask].mean() < 0.6 * pixels[mask].mean()  # dark strands

        gel, mask = drawn(img, "gel_bubbles", seed)
        assert gel[mask].mean() > pixels[mask].mean()  # bright rims


def test_draw_hair_takes_a_strand_count(ham_images: list[Image.Image]) -> None:
    img = ham_images[1]
    one = changed(img, draw_hair(img, np.random.default_rng(0), n=1)).sum()
    many = changed(img, draw_hair(img, np.random.default_rng(0), n=12)).sum()
    assert 0 < one < many
    with pytest.raises(ValueError, match="at least 1"):
        draw_hair(img, np.random.default_rng(0), n=0)
    with pytest.raises(ValueError, match="unknown artifact kind 'laser'"):
        add_artifact(img, "laser")


def test_add_artifact_reads_paths(shared_data: Path) -> None:
    path = shared_data / "ham10000" / ham_rows(shared_data, 1)[0]["file"]
    from_path = add_artifact(path, "ruler", seed=3)
    assert np.array_equal(
        np.asarray(from_path), np.asarray(add_artifact(load_image(path), "ruler", 3))
    )


# --------------------------------------------------------------------------- biased splits


def ham_records(shared_data: Path) -> list[Record]:
    rows = ham_rows(shared_data, 60, {"mel", "nv", "bkl"})
    return [Record(image=str(shared_data / "ham10000" / r["file"]), label=r["label"]) for r in rows]


def test_shortcut_split_makes_the_artifact_follow_the_label(shared_data: Path) -> None:
    records = ham_records(shared_data)
    split = shortcut_split(records, ("mel", "nv"), "ruler", p_biased=0.8, seed=1)
    labels = [r.label for r in split["records"]]
    assert labels == [r.label for r in records if r.label in ("mel", "nv")]
    assert split["y"].tolist() == [0 if lab == "mel" else 1 for lab in labels]
    for cls, share in ((0, 0.8), (1, 0.2)):
        rows = split["y"] == cls
        assert split["artifact"][rows].sum() == round(share * rows.sum())
    again = shortcut_split(records, ("mel", "nv"), "ruler", p_biased=0.8, seed=1)
    assert np.array_equal(again["artifact"], split["artifact"])
    assert np.array_equal(again["seeds"], split["seeds"])
    other = shortcut_split(records, ("mel", "nv"), "ruler", p_biased=0.8, seed=2)
    assert not np.array_equal(other["artifact"], split["artifact"])

    flagged = int(np.flatnonzero(split["artifact"])[0])
    plain = int(np.flatnonzero(~split["artifact"])[0])
    original = load_image(split["records"][flagged].image)
    assert changed(original, shortcut_image(split, flagged)).any()
    unchanged = shortcut_image(split, plain)
    assert not changed(load_image(split["records"][plain].image), unchanged).any()

    with pytest.raises(ValueError, match="p_biased"):
        shortcut_split(records, ("mel", "nv"), "ruler", p_biased=1.5)
    with pytest.raises(ValueError, match="no record is labelled 'df'"):
        shortcut_split(records, ("mel", "df"), "ruler")
    with pytest.raises(ValueError, match="two different labels"):
        shortcut_split(records, ("mel", "mel"), "ruler")


# --------------------------------------------------------------------------- real embeddings


def test_by_contrast_finds_a_drawn_ruler_in_real_embeddings(shared_data: Path) -> None:
    """60 HAM10000 images with and without a drawn ruler, embedded by the bundled model. The
    candidate "latents" are ReLU projections (after centring on the clean mean) on a few
    directions; the ruler direction is the mean embedding shift of the first 30 images, and
    the contrast on the other 30 picks it out."""
    import dermfm

    model = dermfm.load_model()
    images = [load_image(shared_data / "ham10000" / r["file"]) for r in ham_rows(shared_data, 60)]
    ruled = [add_artifact(img, "ruler", seed=i) for i, img in enumerate(images)]
    clean = model.embed_images(images).vectors.numpy().astype(np.float64)
    drawn = model.embed_images(ruled).vectors.numpy().astype(np.float64)
    fit, held = slice(0, 30), slice(30, None)
    centre = clean[fit].mean(axis=0)
    shift = (drawn[fit] - clean[fit]).mean(axis=0)
    components = np.linalg.svd(clean[fit] - centre, full_matrices=False)[2][:2]
    rng = np.random.default_rng(0)
    candidates = np.vstack([centre, components, rng.normal(size=(3, centre.shape[0])), shift])
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)

    def acts(e: np.ndarray) -> np.ndarray:
        return np.maximum((e - centre) @ candidates.T, 0.0)

    found = by_contrast({"ruler": acts(drawn[held])}, acts(clean[held]), top=1)
    assert [s.latent for s in found["ruler"]] == [candidates.shape[0] - 1]
    assert found["ruler"][0].score > 1.0
