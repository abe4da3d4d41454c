"""Zero-shot evaluation tasks on labelled records (dataset and task kept apart, as in
CLIP_benchmark): embed a split once, then score diagnosis, melanoma-vs-rest and concept tasks,
each metric with a 95% cluster-bootstrap interval (clusters: the records' ``group``, e.g. the
HAM10000 lesion, so images of one lesion never count as independent evidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dermfm.concepts import ConceptAnnotator
from dermfm.data import Record, mask_region
from dermfm.errors import ImageError
from dermfm.evaluate.metrics import Estimate, auroc, bootstrap, classification_report
from dermfm.io import load_image
from dermfm.knowledge import LabelSet, load_label_set, load_ontology
from dermfm.models.base import DermModel
from dermfm.zeroshot import ZeroShotClassifier


@dataclass
class EmbeddedSplit:
    """Image embeddings of records (those whose image could not be read are left out)."""

    records: list[Record]
    vectors: torch.Tensor
    failed: list[ImageError]


def embed_records(
    model: DermModel, records: Sequence[Record], batch_size: int = 64
) -> EmbeddedSplit:
    """Embed records' images with their ``mask_box`` applied (as in training)."""
    kept: list[Record] = []
    vectors: list[torch.Tensor] = []
    failed: list[ImageError] = []
    for start in range(0, len(records), batch_size):
        chunk, images = [], []
        for record in records[start : start + batch_size]:
            try:
                images.append(mask_region(load_image(record.image), record.mask_box))
                chunk.append(record)
            except ImageError as exc:
                failed.append(exc)
        if images:
            result = model.embed_images(images, batch_size=batch_size, show_progress=False)
            vectors.append(result.vectors)
            kept += [chunk[i] for i in result.ok]
            failed += list(result.errors.values())
    stacked = torch.cat(vectors) if vectors else torch.empty(0, model.embed_dim)
    return EmbeddedSplit(kept, stacked, failed)


def _targets(split: EmbeddedSplit, label_set: LabelSet) -> np.ndarray:
    position = {c.label: i for i, c in enumerate(label_set.classes)}
    return np.array([position.get(r.metadata.get("dataset_label", ""), -1) for r in split.records])


def diagnosis_report(
    model: DermModel,
    split: EmbeddedSplit,
    label_set: str | LabelSet,
    templates: str = "skin8",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Accuracy, balanced accuracy, macro-F1, macro AUROC and top-5 of zero-shot diagnosis."""
    labels = load_label_set(label_set) if isinstance(label_set, str) else label_set
    y = _targets(split, labels)
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"no record carries a label of label set {labels.name!r}")
    probs = ZeroShotClassifier(model, labels=labels, templates=templates).predict_proba(
        split.vectors[torch.from_numpy(keep)]
    )
    groups = [r.key for r, k in zip(split.records, keep, strict=True) if k]
    return classification_report(
        y[keep], probs.numpy(), labels.names, groups=groups, n_boot=n_boot, seed=seed, top_k=(1, 5)
    )


def condition_vs_rest_auroc(
    model: DermModel,
    split: EmbeddedSplit,
    label_set: str | LabelSet,
    node: str,
    templates: str = "skin8",
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """AUROC of ``node`` (e.g. ``melanoma``) vs the rest, scoring each image by the summed
    zero-shot probability of the label-set classes at or below ``node`` in the ontology."""
    labels = load_label_set(label_set) if isinstance(label_set, str) else label_set
    ontology = load_ontology()
    below = {node} | {n.id for n in ontology.descendants(node)}
    columns = [i for i, c in enumerate(labels.classes) if c.node in below]
    if not columns:
        raise ValueError(f"label set {labels.name!r} has no class at or below {node!r}")
    probs = ZeroShotClassifier(model, labels=labels, templates=templates).predict_proba(
        split.vectors
    )
    score = probs[:, columns].sum(1).numpy()
    truth = np.array([r.label in below for r in split.records])
    groups = [r.key for r in split.records]
    return bootstrap(
        auroc, truth, score, n_boot=n_boot, seed=seed, groups=groups, name=f"{node}_auroc"
    )


def concept_aurocs(
    model: DermModel,
    split: EmbeddedSplit,
    concept_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """AUROC of each concept's MONET score against the records' concept labels.

    Concepts default to those labelled in the records; a concept with only one class among
    them is left out.
    """
    ids = list(concept_ids or sorted({c for r in split.records for c in r.concepts}))
    annotator = ConceptAnnotator(model, concepts=ids)
    scores = annotator.scores(split.vectors).numpy()
    out: dict[str, Estimate] = {}
    for k, concept in enumerate(annotator.vocabulary):
        rows = [i for i, r in enumerate(split.records) if concept.id in r.concepts]
        truth = np.array([split.records[i].concepts[concept.id] for i in rows])
        if len(set(truth.tolist())) < 2:
            continue
        groups = [split.records[i].key for i in rows]
        out[concept.id] = bootstrap(
            auroc, truth, scores[rows, k], n_boot=n_boot, seed=seed, groups=groups, name=concept.id
        )
    return out
