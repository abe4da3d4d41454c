"""Zero-shot evaluation tasks on labelled records (dataset and task kept apart, as in
CLIP_benchmark): embed a split once, then score diagnosis, melanoma-vs-rest and concept tasks,
each metric with a 95% cluster-bootstrap interval (clusters: the records' ``group``, e.g. the
HAM10000 lesion, so images of one lesion never count as independent evidence).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dermfm.concepts import ConceptAnnotator
from dermfm.data import Record
from dermfm.errors import ImageError
from dermfm.evaluate.metrics import Estimate, auroc, bootstrap, classification_report
from dermfm.io import image_digest
from dermfm.knowledge import LabelSet, load_label_set, load_ontology
from dermfm.models.base import DermModel
from dermfm.store import EmbeddingStore, cache_store, embed_items, image_key, item_of
from dermfm.store.core import vectors_of
from dermfm.zeroshot import ZeroShotClassifier

if TYPE_CHECKING:
    from dermfm.adapters import Adapter


@dataclass
class EmbeddedSplit:
    """Image embeddings of records (those whose image could not be read are left out)."""

    records: list[Record]
    vectors: torch.Tensor
    failed: list[ImageError]


def _content_keys(
    records: Sequence[Record], tta: bool = False
) -> tuple[list[str | None], list[ImageError]]:
    """Per record: the content key of its image bytes, mask and test-time augmentation
    (:func:`~dermfm.store.image_key`; ``None`` when the file is unreadable)."""
    keys: list[str | None] = []
    failed: list[ImageError] = []
    for record in records:
        try:
            keys.append(image_key(image_digest(record.image), record.mask_box, tta))
        except ImageError as exc:
            keys.append(None)
            failed.append(exc)
    return keys, failed


def embed_records(
    model: DermModel,
    records: Sequence[Record],
    batch_size: int = 64,
    *,
    cache: bool = True,
    tta: bool = False,
    stores: Sequence[str | Path] = (),
    show_progress: bool | None = None,
) -> EmbeddedSplit:
    """Embed records' images with their ``mask_box`` applied (as in training).

    Embeddings are content-keyed (image bytes + mask + ``tta``) rows of embedding stores: the
    ``stores`` given (``dermfm embed`` folders, checked to hold this model's embeddings) are
    read first, then the user's cache (itself a store, :func:`~dermfm.store.cache_store`);
    only the images found in none are embedded, and those rows are added to the cache, so a
    re-run, another task or another dataset holding the same image does not embed it again
    (``cache=False``, or a model whose weights are changing, neither reads nor adds to the
    cache). Records whose image cannot be read or decoded are left out and listed in
    ``failed``. ``tta``: test-time augmentation
    (:meth:`~dermfm.models.DermModel.encode_images`), stored under keys of their own.

    Raises:
        StoreError: a store in ``stores`` is missing or holds another model's embeddings.
    """
    keys, failed = _content_keys(records, tta)
    opened = [EmbeddingStore.open(s, model) for s in stores]
    cached = cache_store(model) if cache and model.cacheable else None
    found: dict[str, np.ndarray] = {}
    for store in [*opened, *([cached] if cached else [])]:
        found |= store.lookup([k for k in keys if k and k not in found])
    todo = [i for i, k in enumerate(keys) if k and k not in found]
    if todo:
        table = embed_items(
            model,
            [item_of(records[i]) for i in todo],
            batch_size=batch_size,
            tta=tta,
            show_progress=show_progress,
        )
        fresh = table.filter(table["error"].is_null())
        vectors = vectors_of(fresh["vector"], model.embed_dim)
        found |= dict(zip(fresh["key"].to_pylist(), vectors, strict=True))
        failed += [
            ImageError(path, error)
            for path, error in zip(
                table["path"].to_pylist(), table["error"].to_pylist(), strict=True
            )
            if error is not None
        ]
        if cached is not None:
            with contextlib.suppress(OSError):  # a read-only cache is not an error
                cached.append(fresh)
    kept = [i for i, k in enumerate(keys) if k in found]
    vectors_out = (
        torch.from_numpy(np.stack([found[keys[i]] for i in kept]))  # type: ignore[index]
        if kept
        else torch.empty(0, model.embed_dim)
    )
    return EmbeddedSplit([records[i] for i in kept], vectors_out, failed)


#: Ontology malignancy classes counted as positive / negative in malignant-vs-benign; other
#: classes (premalignant, uncertain, mixed) are left out of that task.
MALIGNANT, NOT_MALIGNANT = {"malignant"}, {"benign", "not_neoplastic"}


def targets(records: Sequence[Record], label_set: LabelSet) -> np.ndarray:
    """Class index of each record in ``label_set`` (-1 when its label is not in the set)."""
    by_label = {c.label: i for i, c in enumerate(label_set.classes)}
    by_node = {c.node: i for i, c in enumerate(label_set.classes) if c.node}
    out = []
    for r in records:
        index = by_label.get(r.metadata.get("dataset_label", ""), by_node.get(r.label or "", -1))
        out.append(index)
    return np.asarray(out, dtype=np.int64)


def malignancy_truth(records: Sequence[Record]) -> np.ndarray:
    """1 malignant, 0 benign / not neoplastic, -1 neither or unknown (left out of the task).

    A dataset's own malignancy column (``metadata['malignant']``) wins over the ontology.
    """
    ontology = load_ontology()
    out = []
    for r in records:
        flag = r.metadata.get("malignant")
        if flag in ("0", "1"):
            out.append(int(flag))
            continue
        kind = ontology.attribute(r.label, "malignancy") if r.label in ontology else None
        out.append(1 if kind in MALIGNANT else 0 if kind in NOT_MALIGNANT else -1)
    return np.asarray(out, dtype=np.int64)


def malignant_columns(label_set: LabelSet) -> list[int]:
    """Columns of the label set's classes whose ontology node is malignant."""
    ontology = load_ontology()
    return [
        i
        for i, c in enumerate(label_set.classes)
        if c.node and ontology.attribute(c.node, "malignancy") in MALIGNANT
    ]


def diagnosis_report(
    model: DermModel,
    split: EmbeddedSplit,
    label_set: str | LabelSet,
    templates: str = "skin8",
    n_boot: int = 1000,
    seed: int = 0,
    top_k: Sequence[int] = (1, 5),
    per_class_auroc: bool = False,
    adapter: Adapter | None = None,
) -> dict[str, Estimate]:
    """The :func:`~dermfm.evaluate.metrics.classification_report` of zero-shot diagnosis on the
    split's labelled records (raw softmax scores, or an ``adapter``'s calibrated ones;
    clusters: the records' ``group``)."""
    labels = load_label_set(label_set) if isinstance(label_set, str) else label_set
    y = targets(split.records, labels)
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"no record carries a label of label set {labels.name!r}")
    clf = ZeroShotClassifier(model, labels=labels, templates=templates, adapter=adapter)
    probs = clf.predict_proba(split.vectors[torch.from_numpy(keep)])
    groups = [r.key for r, k in zip(split.records, keep, strict=True) if k]
    return classification_report(
        y[keep],
        probs.numpy(),
        labels.names,
        groups=groups,
        n_boot=n_boot,
        seed=seed,
        top_k=top_k,
        per_class_auroc=per_class_auroc,
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
