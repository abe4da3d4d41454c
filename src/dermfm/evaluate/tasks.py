"""Zero-shot evaluation tasks on labelled records (dataset and task kept apart, as in
CLIP_benchmark): embed a split once, then score diagnosis, melanoma-vs-rest and concept tasks,
each metric with a 95% cluster-bootstrap interval (clusters: the records' ``group``, e.g. the
HAM10000 lesion, so images of one lesion never count as independent evidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dermfm.cache import VectorStore, content_key
from dermfm.concepts import ConceptAnnotator
from dermfm.data import Record, mask_region
from dermfm.errors import ImageError
from dermfm.evaluate.metrics import Estimate, auroc, bootstrap, classification_report
from dermfm.io import image_digest, load_image
from dermfm.knowledge import LabelSet, load_label_set, load_ontology
from dermfm.models.base import TTA_VIEWS, DermModel
from dermfm.progress import progress
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
    """Per record: the key of its image content and mask, and of the test-time augmentation
    views when ``tta`` (``None`` when the file is unreadable)."""
    keys: list[str | None] = []
    failed: list[ImageError] = []
    views = [("tta", [list(v) for v in TTA_VIEWS])] if tta else []
    for record in records:
        try:
            keys.append(
                content_key("image-v1", image_digest(record.image), record.mask_box, *views)
            )
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
    show_progress: bool | None = None,
) -> EmbeddedSplit:
    """Embed records' images with their ``mask_box`` applied (as in training).

    Embeddings are stored by model and image content (file bytes + mask) in the cache folder,
    so a re-run, another task or another dataset holding the same image does not embed it
    again (``cache=False``, or a model whose weights are changing, always embeds). Records
    whose image cannot be read or decoded are left out and listed in ``failed``. ``tta``:
    test-time augmentation (:meth:`~dermfm.models.DermModel.encode_images`), cached under
    keys of their own.
    """
    keys, failed = _content_keys(records, tta)
    store = VectorStore("embeddings", model.cache_key, cache and model.cacheable)
    known = store.get_many([k for k in keys if k], model.embed_dim)
    todo = [i for i, k in enumerate(keys) if k and k not in known]
    fresh: dict[str, torch.Tensor] = {}
    with progress(f"Embedding {len(todo)} images", len(todo), show_progress) as advance:
        for start in range(0, len(todo), batch_size):
            chunk, images = [], []
            for i in todo[start : start + batch_size]:
                try:
                    images.append(mask_region(load_image(records[i].image), records[i].mask_box))
                    chunk.append(i)
                except ImageError as exc:
                    failed.append(exc)
            if images:
                result = model.embed_images(
                    images, batch_size=batch_size, tta=tta, show_progress=False
                )
                for row, j in enumerate(result.ok):
                    fresh[keys[chunk[j]]] = result.vectors[row]  # type: ignore[index]
                failed += list(result.errors.values())
            advance(len(todo[start : start + batch_size]))
    store.put_many(fresh)
    store.close()
    found = known | fresh
    kept = [i for i, k in enumerate(keys) if k in found]
    vectors = (
        torch.stack([found[keys[i]] for i in kept])  # type: ignore[index]
        if kept
        else torch.empty(0, model.embed_dim)
    )
    return EmbeddedSplit([records[i] for i in kept], vectors, failed)


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
