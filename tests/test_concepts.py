"""Concept annotation: the MONET formula computed directly, thresholds, selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from images import reference_open

import dermfm
from dermfm.concepts import ConceptAnnotator

# MONET's published protocol (Kim et al. 2024): target templates and their reference prompts.
MONET_TARGETS = [
    "This is skin image of {}",
    "This is dermatology image of {}",
    "This is image of {}",
    "A skin image of {}",
    "An image of {}, a skin condition.",
    "{}, a skin disorder, is shown in this image.",
]
MONET_REFERENCES = [
    ["This is skin image"],
    ["This is dermatology image"],
    ["This is image"],
    ["A skin image"],
    ["An image of a skin condition."],
    ["a skin disorder is shown in this image."],
]
MONET_TEMPERATURE = 1 / math.exp(4.5944)


def _monet_direct(model, tokenizer, image_features: np.ndarray, terms: list[str]) -> np.ndarray:
    """MONET's calculate_concept_presence_score, written out with numpy."""

    def embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            e = model.encode_text(tokenizer(texts)).numpy().astype(np.float64)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    target = np.stack([embed([t.format(term) for term in terms]) for t in MONET_TARGETS])
    reference = np.stack([embed(refs) for refs in MONET_REFERENCES])
    target_sim = (target @ image_features.T).mean(axis=1)  # (T, N)
    ref_sim = (reference @ image_features.T).mean(axis=1)  # (T, N)
    logits = np.stack([target_sim, ref_sim]) / MONET_TEMPERATURE
    soft = np.exp(logits - logits.max(axis=0)) / np.exp(logits - logits.max(axis=0)).sum(axis=0)
    return soft[0].mean(axis=0)


def test_scores_equal_the_monet_formula(tiny_open_clip: Path, oc_model, skin_images) -> None:
    """On the drawn photos (JPEG, PNG, WebP, HEIC) and on real ones."""
    import open_clip

    spec = f"local-dir:{tiny_open_clip}"
    ref_model, _, preprocess = open_clip.create_model_and_transforms(spec)
    ref_model.eval()
    tokenizer = open_clip.get_tokenizer(spec)
    paths = [p for p, _ in skin_images if "derm7pt" not in str(p)]
    with torch.no_grad():
        feats = (
            ref_model.encode_image(torch.stack([preprocess(reference_open(p)) for p in paths]))
            .numpy()
            .astype(np.float64)
        )
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)

    annotator = ConceptAnnotator(oc_model, ["papule", "scale", "blue_whitish_veil", "hair"])
    results = annotator.annotate(paths)
    for concept in annotator.vocabulary:
        expected = _monet_direct(ref_model, tokenizer, feats, list(concept.synonyms))
        got = [next(s.score for s in r.scores if s.id == concept.id) for r in results]
        assert np.allclose(got, expected, atol=1e-5), concept.id


def test_every_concept_scored_and_threshold_sets_presence(oc_model, generated_images) -> None:
    vocab = dermfm.load_concepts()
    low = dermfm.annotate_concepts(generated_images[0][0], model=oc_model, threshold=0.0)
    high = dermfm.annotate_concepts(generated_images[0][0], model=oc_model, threshold=1.01)
    assert [s.id for s in low.scores] == [c.id for c in vocab]
    assert all(s.present for s in low.scores)
    assert not any(s.present for s in high.scores)
    assert [s.score for s in low.scores] == [s.score for s in high.scores]
    assert all(0.0 < s.score < 1.0 for s in low.scores)
    assert low.present()[0].score == max(s.score for s in low.scores)


def test_select_by_group_and_reject_unknown(oc_model) -> None:
    derm7pt = ConceptAnnotator(oc_model, ["derm7pt"]).vocabulary
    assert len(derm7pt) > 7 and {c.group for c in derm7pt} == {"derm7pt"}
    with pytest.raises(KeyError, match="no_such_concept"):
        ConceptAnnotator(oc_model, ["no_such_concept"])


def test_failed_inputs_keep_their_place(oc_model, generated_images, image_files) -> None:
    results = dermfm.annotate_concepts(
        [image_files["text"], generated_images[2][0]], model=oc_model, concepts=["artifact"]
    )
    assert results[0].error == "not a recognised image format" and not results[0].scores
    assert results[1].ok and {s.group for s in results[1].scores} == {"artifact"}
