"""Zero-shot diagnosis: parity with direct open_clip and transformers computations, roll-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from images import reference_open

import dermfm
from dermfm.knowledge import diagnosis_templates, load_ontology
from dermfm.zeroshot import ZeroShotClassifier

# The published 8-template skin ensemble (OPENAI_SKIN_TEMPLATES of the DermLIP/MAKE code).
SKIN8 = [
    "This is a skin image of {}",
    "This is a skin image of {}.",
    "A skin image of {}.",
    "An image of {}, a skin condition.",
    "{}, a skin disorder, is shown in this image.",
    "The skin lesion depicted is {}.",
    "The skin cancer in this image is {}.",
    "This image depicts {}, a type of skin cancer.",
]


def test_packaged_skin8_is_the_published_ensemble() -> None:
    assert list(diagnosis_templates("skin8")) == SKIN8


@pytest.fixture
def parity_images(request: pytest.FixtureRequest, skin_images) -> list[Path]:
    """The photos compared with the reference pipelines: the drawn set (JPEG, PNG, WebP, HEIC)
    plus a 4000x3000 phone JPEG, or the real photos (HAM10000 and DermNet)."""
    paths = [p for p, _ in skin_images if "derm7pt" not in str(p)]
    if request.node.callspec.params["skin_images"] == "drawn":
        paths.append(request.getfixturevalue("phone_jpeg"))
    return paths


def test_probabilities_equal_direct_open_clip(
    tiny_open_clip: Path, oc_model, parity_images: list[Path]
) -> None:
    import open_clip

    spec = f"local-dir:{tiny_open_clip}"
    ref_model, _, ref_preprocess = open_clip.create_model_and_transforms(spec)
    ref_model.eval()
    tokenizer = open_clip.get_tokenizer(spec)
    names = dermfm.load_label_set("ham7").names
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            ref_model,
            tokenizer,
            names,
            [lambda c, t=t: t.format(c) for t in SKIN8],
            num_classes_per_batch=3,
            device="cpu",
            use_tqdm=False,
        )
        paths = parity_images
        pixels = torch.stack([ref_preprocess(reference_open(p)) for p in paths])
        feats = torch.nn.functional.normalize(ref_model.encode_image(pixels), dim=-1)
        expected = (ref_model.logit_scale.exp() * feats @ weights).softmax(dim=-1)

    results = dermfm.diagnose(paths, model=oc_model, labels="ham7", top_k=7)
    for row, result in zip(expected, results, strict=True):
        got = {p.name: p.probability for p in result.predictions}
        for name, prob in zip(names, row.tolist(), strict=True):
            assert got[name] == pytest.approx(prob, abs=1e-5)


def test_probabilities_equal_direct_transformers(
    tiny_transformers_clip: Path, parity_images: list[Path]
) -> None:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(tiny_transformers_clip).eval()
    processor = AutoProcessor.from_pretrained(tiny_transformers_clip)
    names = ["melanoma", "nevus", "seborrheic keratosis", "basal cell carcinoma"]
    paths = parity_images
    with torch.no_grad():
        class_rows = []
        for name in names:
            inputs = processor(
                text=[t.format(name) for t in SKIN8], padding=True, return_tensors="pt"
            )
            emb = model.get_text_features(**inputs).pooler_output
            emb = torch.nn.functional.normalize(emb, dim=-1).mean(dim=0)
            class_rows.append(torch.nn.functional.normalize(emb, dim=0))
        weights = torch.stack(class_rows)
        pixels = processor(images=[reference_open(p) for p in paths], return_tensors="pt")[
            "pixel_values"
        ]
        feats = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=pixels).pooler_output, dim=-1
        )
        expected = (model.logit_scale.exp() * feats @ weights.T).softmax(dim=-1)

    loaded = dermfm.load_model(tiny_transformers_clip)
    results = dermfm.diagnose(paths, model=loaded, labels=names, top_k=4)
    for row, result in zip(expected, results, strict=True):
        got = {p.name: p.probability for p in result.predictions}
        for name, prob in zip(names, row.tolist(), strict=True):
            assert got[name] == pytest.approx(prob, abs=1e-5)


def test_rollup_sums_class_probabilities_up_the_ontology(oc_model) -> None:
    clf = ZeroShotClassifier(oc_model, labels="ham7", temperature=0.01)
    probs = clf.predict_proba(torch.nn.functional.normalize(torch.randn(3, 32), dim=-1))
    onto = load_ontology()
    for row in probs:
        result = clf.summarise("x", row, top_k=7)
        by_node = {r.node: r.probability for r in result.rollup}
        p = {c.node: float(v) for c, v in zip(clf.label_set.classes, row, strict=True)}
        assert by_node["skin_condition"] == pytest.approx(1.0, abs=1e-5)
        malignant = sum(
            v
            for node, v in p.items()
            if any(a.id == "malignant_neoplasm" for a in onto.ancestors(node))
        )
        assert by_node["malignant_neoplasm"] == pytest.approx(malignant, abs=1e-6)
        assert by_node["malignant_neoplasm"] == pytest.approx(
            p["melanoma"] + p["basal_cell_carcinoma"]
        )
        assert sum(result.malignancy.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.malignancy["malignant"] == pytest.approx(by_node["malignant_neoplasm"])
        assert 0.0 <= result.entropy <= 1.0


def test_temperature_sharpens_and_flattens(oc_model) -> None:
    # an image embedding equal to one class's embedding: a clear, seed-independent winner
    emb = ZeroShotClassifier(oc_model, labels="ham7").weights[3:4]
    sharp = ZeroShotClassifier(oc_model, labels="ham7", temperature=0.001).predict_proba(emb)
    flat = ZeroShotClassifier(oc_model, labels="ham7", temperature=100.0).predict_proba(emb)
    assert sharp.max() > 0.99
    assert flat.max() < 1 / 7 + 0.01
    with pytest.raises(ValueError, match="temperature"):
        ZeroShotClassifier(oc_model, labels="ham7", temperature=0)


def test_batches_keep_order_and_report_failures(oc_model, generated_images, image_files) -> None:
    inputs = [
        generated_images[0][0],
        image_files["truncated"],
        generated_images[1][0],
        image_files["missing"],
    ]
    results = dermfm.diagnose(inputs, model=oc_model, labels="pad6")
    assert [r.source for r in results] == [str(p) for p in inputs]
    assert [r.ok for r in results] == [True, False, True, False]
    assert "truncated" in results[1].error and "not found" in results[3].error
    assert len(results[0].predictions) == 5


def test_single_image_and_user_label_files(oc_model, generated_images, tmp_path: Path) -> None:
    text_file = tmp_path / "mine.txt"
    text_file.write_text("# my classes\nmelanoma\nnevus\nsomething not in the ontology\n")
    result = dermfm.diagnose(generated_images[0][0], model=oc_model, labels=str(text_file))
    assert isinstance(result, dermfm.Diagnosis)
    nodes = {p.name: p.node for p in result.predictions}
    assert nodes["melanoma"] == "melanoma"
    assert nodes["something not in the ontology"] is None
    assert sum(p.probability for p in result.predictions) == pytest.approx(1.0, abs=1e-5)
    assert result.malignancy["unknown"] > 0


def test_class_embeddings_are_cached_by_content(oc_model) -> None:
    from dermfm import cache

    first = ZeroShotClassifier(oc_model, labels="derm7pt").weights
    key = cache.content_key(
        "zeroshot", oc_model.cache_key, dermfm.load_label_set("derm7pt").names, SKIN8
    )
    assert torch.equal(cache.load_tensor("classifiers", key), first)
    assert torch.equal(ZeroShotClassifier(oc_model, labels="derm7pt").weights, first)


def test_all_label_set_diagnoses_photos_end_to_end(oc_model, skin_images) -> None:
    results = dermfm.diagnose([p for p, _ in skin_images], model=oc_model, labels="all")
    assert all(r.ok for r in results)
    for r in results:
        assert r.predictions[0].probability >= r.predictions[-1].probability
        assert {"malignant", "benign"} <= set(r.malignancy)
        assert r.to_dict()["score_kind"].startswith("uncalibrated")
