"""End-to-end SAE workflows over dermfm datasets: train on cached embeddings of a split,
measure how much zero-shot accuracy the reconstructions keep, and bundle an SAE folder.

The CLI (``dermfm sae ...``) and the measurement scripts call these; each step reuses the
evaluation harness (dataset specs, the content-keyed embedding cache, metrics with intervals).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dermfm.data import DatasetRecords, Record
from dermfm.evaluate import metrics
from dermfm.evaluate.tasks import EmbeddedSplit, embed_records, targets
from dermfm.knowledge import LabelSet
from dermfm.models.base import DermModel
from dermfm.zeroshot import ZeroShotClassifier


def embed_splits(
    model: DermModel,
    datasets: Sequence[DatasetRecords],
    split: str,
    *,
    stores: Sequence[str | Path] = (),
    show_progress: bool | None = None,
) -> EmbeddedSplit:
    """Embeddings of ``split`` of every dataset, concatenated (content-keyed: read from the
    embedding ``stores`` and the cache, only missing images embedded)."""
    records = [r for d in datasets for r in d.splits.get(split, [])]
    if not records:
        names = ", ".join(d.name for d in datasets)
        raise ValueError(f"no record in split {split!r} of {names}")
    return embed_records(model, records, stores=stores, show_progress=show_progress)


def reconstruct(sae: Any, embeddings: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE reconstructions of embeddings, L2-normalised like the model's own embeddings."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(embeddings), batch_size):
            x_hat, _ = sae(embeddings[start : start + batch_size].float())
            parts.append(torch.nn.functional.normalize(x_hat, dim=-1))
    return torch.cat(parts) if parts else embeddings.new_empty(embeddings.shape)


def accuracy_recovered(
    model: DermModel,
    sae: Any,
    split: EmbeddedSplit,
    label_set: LabelSet,
    *,
    templates: str = "skin8",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero-shot accuracy and balanced accuracy with the original embeddings and with their SAE
    reconstructions, on the same images; the paired bootstrap difference (reconstructed -
    original) with its 95% interval, and ``recovered`` = reconstructed / original."""
    y = targets(split.records, label_set)
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"no record carries a label of label set {label_set.name!r}")
    original = split.vectors[torch.from_numpy(keep)]
    classifier = ZeroShotClassifier(model, labels=label_set, templates=templates)
    p_orig = classifier.predict_proba(original).numpy()
    p_rec = classifier.predict_proba(reconstruct(sae, original)).numpy()
    groups = [r.key for r, k in zip(split.records, keep, strict=True) if k]
    out: dict[str, Any] = {"n_images": int(keep.sum()), "label_set": label_set.name}
    for name, fn in (
        ("accuracy", metrics.accuracy),
        ("balanced_accuracy", metrics.balanced_accuracy),
    ):
        paired = metrics.paired_bootstrap(
            lambda t, p, fn=fn: fn(t, p.argmax(axis=1)),
            y[keep],
            p_orig,
            p_rec,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
            name=name,
        )
        out[name] = {
            "original": paired.value_a,
            "reconstructed": paired.value_b,
            "recovered": paired.value_b / paired.value_a if paired.value_a else float("nan"),
            "difference": paired.difference.to_dict(),
            "p_value": paired.p_value,
        }
    return out


def _model_reference(model: DermModel) -> str:
    """How to load ``model`` again: its registry name, else the folder it came from."""
    from dermfm.models.registry import lookup

    if lookup(model.name) is not None:
        return model.name
    return model.card.loaded_from or model.name


def _images(records: Sequence[Record], masked: bool) -> tuple[list[Any], list[Record]]:
    """Decoded images of records (their mask applied or not); unreadable ones are skipped."""
    from dermfm.data import mask_region
    from dermfm.errors import ImageError
    from dermfm.io import load_image

    images, kept = [], []
    for record in records:
        try:
            image = load_image(record.image)
        except ImageError:
            continue
        images.append(mask_region(image, record.mask_box) if masked else image)
        kept.append(record)
    return images, kept


def artifact_embeddings(
    model: DermModel,
    records: Sequence[Record],
    n: int,
    *,
    seed: int = 0,
    show_progress: bool | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Embeddings of ``n`` of ``records``' images with one artifact on each (kinds in turn),
    and the kind of each. Artifacts are drawn, except the watermark of records that carry a
    real one behind their ``mask_box`` (DermNet): their unmasked image is used. Images that
    cannot be read are skipped."""
    import random

    from dermfm.interpret.synthetic import add_artifact, artifact_kinds

    kinds = list(artifact_kinds())
    picked = random.Random(seed).sample(list(records), min(n, len(records)))
    images, drawn = [], []
    for i, record in enumerate(picked):
        kind = kinds[i % len(kinds)]
        real = kind == "watermark" and record.mask_box is not None
        loaded, _ = _images([record], masked=not real)
        if loaded:
            images.append(loaded[0] if real else add_artifact(loaded[0], kind, seed=seed + i))
            drawn.append(kind)
    embedded = model.embed_images(images, show_progress=show_progress)
    return embedded.vectors, [drawn[i] for i in embedded.ok]


def train_on_datasets(
    model: DermModel,
    datasets: Sequence[DatasetRecords],
    output: str | Path,
    *,
    split: str = "train",
    eval_split: str = "test",
    settings: dict[str, Any] | None = None,
    artifact_images: int = 0,
    overwrite: bool = False,
    stores: Sequence[str | Path] = (),
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Train an SAE on the embeddings of ``split`` of ``datasets`` (plus ``artifact_images``
    synthetic-artifact images), measure it on ``eval_split`` and write it to ``output``.
    Embeddings are read from the embedding ``stores`` (``dermfm embed``) where they hold them.

    ``settings`` are :class:`~dermfm.interpret.sae.SAEConfig` fields (``d_in`` comes from the
    model). The SAE's metadata records the model, the data, the training report and the
    zero-shot accuracy recovered on each dataset's ``eval_split``.
    """
    from dermfm.interpret.sae import SAEConfig, save_sae, train_sae

    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output}: already exists and is not empty (--overwrite replaces it)")
    config = SAEConfig.from_dict({**(settings or {}), "d_in": model.embed_dim})
    train = embed_splits(model, datasets, split, stores=stores, show_progress=show_progress)
    vectors = [train.vectors]
    if artifact_images:
        extra, _ = artifact_embeddings(
            model, train.records, artifact_images, seed=config.seed, show_progress=show_progress
        )
        vectors.append(extra)
    evaluated = {
        d.name: embed_records(
            model, d.splits[eval_split], stores=stores, show_progress=show_progress
        )
        for d in datasets
        if d.splits.get(eval_split)
    }
    val = torch.cat([e.vectors for e in evaluated.values()]) if evaluated else None
    sae, report = train_sae(
        torch.cat(vectors), config, val_embeddings=val, show_progress=show_progress
    )
    recovered = {
        d.name: accuracy_recovered(model, sae, evaluated[d.name], d.label_set)
        for d in datasets
        if d.name in evaluated
    }
    sae.metadata = {
        "model": _model_reference(model),
        "model_cache_key": model.cache_key,
        "datasets": [d.name for d in datasets],
        "split": split,
        "n_embeddings": int(sum(len(v) for v in vectors)),
        "artifact_images": int(len(vectors[1]) if artifact_images else 0),
        "eval_split": eval_split,
        "training": report.to_dict(),
        "accuracy_recovered": recovered,
    }
    save_sae(sae, output, overwrite=overwrite)
    return {
        "metrics": {"train": report.train_metrics, "eval": report.val_metrics or {}},
        "accuracy_recovered": recovered,
    }


def latent_names(sae: Any, model: DermModel, top: int = 5) -> list[Any]:
    """Every latent of ``sae`` named with the packaged vocabulary (text embeddings cached)."""
    from dermfm.interpret.naming import load_vocabulary, name_latents, text_embeddings

    vocabulary = load_vocabulary()
    return name_latents(sae.directions, text_embeddings(model, vocabulary), vocabulary, top=top)


def find_artifacts(
    model: DermModel,
    sae: Any,
    records: Sequence[Record],
    *,
    n: int = 200,
    top: int = 3,
    min_effect: float = 0.8,
    seed: int = 0,
    show_progress: bool | None = None,
) -> tuple[Any, dict[str, list[Any]]]:
    """The artifact latents of ``sae``, by contrast: for each artifact kind, the SAE codes of
    ``n`` images with the artifact against the same images without it.

    Artifacts are drawn on (:func:`~dermfm.interpret.synthetic.add_artifact`), except the
    watermark when records carry a real one behind their ``mask_box`` (DermNet): then the
    images with and without their mask are compared. Returns the
    :class:`~dermfm.interpret.artifacts.ArtifactSuppressor` and the latents found per kind.
    """
    import random

    from dermfm.interpret.artifacts import ArtifactSuppressor, by_contrast
    from dermfm.interpret.synthetic import add_artifact, artifact_kinds

    rng = random.Random(seed)
    picked = rng.sample(list(records), min(n, len(records)))
    clean, _ = _images(picked, masked=True)
    if not clean:
        raise ValueError("no readable image to draw artifacts on")
    base = sae.encode(model.embed_images(clean, show_progress=show_progress).vectors)
    watermarked = [r for r in records if r.mask_box is not None]
    found: dict[str, list[Any]] = {}
    for kind in artifact_kinds():
        if kind == "watermark" and watermarked:
            sample = rng.sample(watermarked, min(n, len(watermarked)))
            without, sample = _images(sample, masked=True)
            with_, _ = _images(sample, masked=False)
            reference = sae.encode(model.embed_images(without).vectors)
        else:
            with_ = [add_artifact(im, kind, seed=seed + i) for i, im in enumerate(clean)]
            reference = base
        acts = sae.encode(model.embed_images(with_, show_progress=show_progress).vectors)
        found |= by_contrast({kind: acts}, reference, top=top, min_effect=min_effect)
    return ArtifactSuppressor.from_latents(found, sae.directions), found


def bottleneck_report(
    model: DermModel,
    sae: Any,
    data: DatasetRecords,
    *,
    train_split: str = "train",
    val_split: str | None = "val",
    test_split: str = "test",
    suppressor: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """A concept bottleneck on SAE codes vs a linear probe on raw embeddings, same images.

    Both are fitted on ``train_split`` (regularisation chosen on ``val_split`` when present)
    and compared on ``test_split`` with intervals and a paired bootstrap. With a
    ``suppressor``, its artifact latents are zeroed for the bottleneck and its directions
    projected out of the embeddings for the probe. Returns the comparison and, per class, the
    latents it rests on with their names.
    """
    from dermfm.evaluate.probe import LinearProbe
    from dermfm.interpret.bottleneck import ConceptBottleneck, compare_with_probe

    parts: dict[str, tuple[torch.Tensor, Any, list[Record]]] = {}
    for name in (train_split, val_split, test_split):
        if name and data.splits.get(name):
            split = embed_records(model, data.splits[name], show_progress=show_progress)
            vectors = split.vectors
            if suppressor is not None:
                vectors = suppressor.transform(vectors)
            y = targets(split.records, data.label_set)
            keep = y >= 0
            labelled = [r for r, k in zip(split.records, keep, strict=True) if k]
            parts[name] = (vectors[torch.from_numpy(keep)], y[keep], labelled)
    for name in (train_split, test_split):
        if name not in parts:
            raise ValueError(f"{data.name}: no labelled record in split {name!r}")
    codes = {name: sae.encode(v) for name, (v, _, _) in parts.items()}
    zeroed = tuple(suppressor.latents) if suppressor is not None else ()
    val = (codes[val_split], parts[val_split][1]) if val_split in parts else (None, None)
    bottleneck = ConceptBottleneck(seed=seed, zero_latents=zeroed).fit(
        codes[train_split], parts[train_split][1], *val
    )
    val_emb = (parts[val_split][0], parts[val_split][1]) if val_split in parts else (None, None)
    probe = LinearProbe(seed=seed).fit(parts[train_split][0], parts[train_split][1], *val_emb)
    test_vectors, test_y, test_records = parts[test_split]
    comparison = compare_with_probe(
        bottleneck,
        probe,
        codes[test_split],
        test_vectors,
        test_y,
        data.label_set.names,
        groups=[r.key for r in test_records],
        n_boot=n_boot,
        seed=seed,
    )
    names = {n.latent: [s.term for s in n.names] for n in latent_names(sae, model)}
    explanations = {
        data.label_set.names[int(c)]: [w._asdict() for w in bottleneck.explain(c, names, top=8)]
        for c in bottleneck.classes_
    }
    return {
        "dataset": data.name,
        "comparison": comparison.to_dict(),
        "markdown": comparison.to_markdown(),
        "explanations": explanations,
        "suppressed_latents": list(zeroed),
    }
