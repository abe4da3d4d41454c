"""The assistant's calibration of a model, fitted on held-out splits and stored with the model.

Per image modality (dermoscopy, clinical photograph), on the validation split of labelled data:

* a temperature for the differential's softmax (:class:`~dermfm.evaluate.TemperatureScaler`),
  so its probabilities are calibrated;
* a split-conformal threshold (LAC, Sadinle et al. 2019: the set of classes whose calibrated
  probability is at least ``1 - q``), so the prediction set holds the true diagnosis with the
  stated coverage on images like these; coverage, set size and accuracy are then measured on
  the test split and stored too, for the report to quote.

From all modalities together: the sharpness percentile below which a photo is "blurry", and the
measured accuracy of the zero-shot modality check. (Whether a photo shows skin at all does not
depend on the model: see :class:`~dermfm.assistant.quality.SkinReference`.)

A model folder holds its calibration in ``assistant/`` (the bundled model ships one); other
models keep theirs in the cache folder (``dermfm assistant calibrate``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dermfm.assistant.modality import MODALITIES, modality_scores
from dermfm.errors import DermfmError

if TYPE_CHECKING:
    from dermfm.adapters import AdapterSpec
    from dermfm.models.base import DermModel
    from dermfm.zeroshot import ZeroShotClassifier

#: Files of an assistant calibration folder.
CALIBRATION_FILE = "calibration.json"


class CalibrationError(DermfmError):
    """A calibration folder that cannot be used, or data that cannot calibrate."""


@dataclass
class GroupCalibration:
    """Calibration of the differential for one modality."""

    temperature: float
    threshold: float  # conformal: classes with calibrated probability >= threshold are in the set
    n_calibration: int
    calibrated_on: str
    measured: dict[str, float] = field(default_factory=dict)  # on the test split


@dataclass
class AssistantCalibration:
    """Everything the assistant needs to state calibrated, checked numbers for one model."""

    model: str
    label_set: str
    templates: str
    coverage: float
    groups: dict[str, GroupCalibration]
    limits: dict[str, float]  # calibrated pixel limits (sharpness_min)
    modality_accuracy: dict[str, float]
    method: str = "split conformal, LAC (least ambiguous set-valued classifier)"
    #: identity of the adapter whose scores were calibrated (``None``: zero-shot scores)
    adapter: str | None = None

    def group(self, modality: str) -> GroupCalibration:
        """The calibration of a modality (the other one's when it has none)."""
        if modality in self.groups:
            return self.groups[modality]
        return next(iter(self.groups.values()))

    def probabilities(self, logits: torch.Tensor, modality: str) -> torch.Tensor:
        """Calibrated class probabilities from zero-shot logits of one modality."""
        return (logits.double() / self.group(modality).temperature).softmax(dim=-1).float()

    def prediction_set(self, probs: torch.Tensor, modality: str) -> list[int]:
        """Class indices in the conformal set, most probable first (never empty: the top class
        is always in it)."""
        order = torch.argsort(probs, descending=True).tolist()
        threshold = self.group(modality).threshold
        return [order[0]] + [i for i in order[1:] if float(probs[i]) >= threshold]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        data = asdict(self)
        data["schema_version"] = 1
        return data

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``calibration.json`` into ``folder`` (never over an existing one unless
        ``overwrite``)."""
        from dermfm.cache import atomic_write_bytes

        folder = Path(folder)
        target = folder / CALIBRATION_FILE
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: pass overwrite=True (--overwrite) to replace")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, json.dumps(self.to_dict(), indent=2).encode("utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AssistantCalibration:
        """Read a calibration folder; :class:`CalibrationError` naming the file on a problem."""
        folder = Path(folder)
        file = folder / CALIBRATION_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            data.pop("schema_version", None)
            groups = {k: GroupCalibration(**v) for k, v in data.pop("groups").items()}
            calibration = cls(groups=groups, **data)
        except FileNotFoundError as exc:
            raise CalibrationError(f"{file}: not found") from exc
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise CalibrationError(f"{file}: not a valid assistant calibration ({exc})") from exc
        if not groups:
            raise CalibrationError(f"{file}: no modality groups")
        return calibration


def model_calibration_folder(model: DermModel) -> Path:
    """Where a model's calibration lives: ``<model folder>/assistant`` when the model was loaded
    from a folder that has one (the bundled model), else the cache folder."""
    from dermfm import cache

    if model.card.loaded_from:
        loaded = Path(model.card.loaded_from)
        folder = (loaded if loaded.is_dir() else loaded.parent) / "assistant"
        if (folder / CALIBRATION_FILE).is_file():
            return folder
    return cache.cache_dir() / "assistant" / cache.content_key("assistant", model.cache_key)


def load_calibration(
    model: DermModel, folder: str | Path | None = None
) -> AssistantCalibration | None:
    """The model's calibration (``None`` when it has none: probabilities are then raw scores).

    Raises:
        CalibrationError: an explicit ``folder`` without a usable calibration.
    """
    chosen = Path(folder) if folder is not None else model_calibration_folder(model)
    if folder is None and not (chosen / CALIBRATION_FILE).is_file():
        return None
    return AssistantCalibration.load(chosen)


# --------------------------------------------------------------------------- fitting


@dataclass
class CalibrationSource:
    """Labelled data of one modality: a dataset spec (name or file) under ``root``.

    ``calibration_split`` ``None`` uses the dataset for the test measurements only (e.g. one
    without a validation split: never calibrate on images the model was trained on).
    """

    dataset: str
    root: str | Path
    modality: str
    calibration_split: str | None = "val"
    test_split: str = "test"


def _conformal_threshold(probs: np.ndarray, y: np.ndarray, coverage: float) -> float:
    """LAC threshold ``1 - q``, with ``q`` the ``ceil((n+1) * coverage)``-th smallest score
    ``1 - p(true class)`` of the ``n`` calibration images (0 when that exceeds ``n``: every
    class is then in the set)."""
    n = len(y)
    scores = np.sort(1.0 - probs[np.arange(n), y])
    rank = math.ceil((n + 1) * coverage)
    return 0.0 if rank > n else float(1.0 - scores[rank - 1])


def _set_metrics(
    calibration: AssistantCalibration, modality: str, probs: torch.Tensor, y: np.ndarray
) -> dict[str, float]:
    from dermfm.evaluate.calibration import expected_calibration_error
    from dermfm.evaluate.metrics import top_k_accuracy

    sets = [calibration.prediction_set(p, modality) for p in probs]
    return {
        "n_test": len(y),
        "coverage": float(np.mean([t in s for t, s in zip(y, sets, strict=True)])),
        "mean_set_size": float(np.mean([len(s) for s in sets])),
        "median_set_size": float(np.median([len(s) for s in sets])),
        "top1_accuracy": top_k_accuracy(y, probs.numpy(), 1),
        "top3_accuracy": top_k_accuracy(y, probs.numpy(), 3),
        "ece_calibrated": expected_calibration_error(y, probs.numpy()),
    }


def _split_logits(
    clf: ZeroShotClassifier, records: Sequence[Any], show_progress: bool | None
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, list[Any]]:
    """Logits, targets, embeddings and records of the records whose label is in the set."""
    from dermfm.evaluate.tasks import embed_records, targets

    split = embed_records(clf.model, records, show_progress=show_progress)
    y = targets(split.records, clf.label_set)
    keep = y >= 0
    vectors = split.vectors[torch.from_numpy(keep)]
    kept = [r for r, k in zip(split.records, keep, strict=True) if k]
    return clf.logits(vectors), y[keep], vectors, kept


def calibrate(
    model: DermModel,
    sources: Sequence[CalibrationSource],
    *,
    coverage: float = 0.9,
    label_set: str = "assistant",
    templates: str = "skin8",
    percentile: float = 0.5,
    adapter: AdapterSpec = None,
    show_progress: bool | None = None,
) -> AssistantCalibration:
    """Fit the assistant's calibration of ``model`` on labelled data (see the module doc).

    Args:
        sources: datasets with their modality; each modality needs a calibration split.
        coverage: target coverage of the prediction sets (``1 - alpha``).
        label_set: the differential's label set.
        percentile: the validation percentile (in %) used as the sharpness limit: about this
            share of real skin photos is asked for a sharper photo.
        adapter: calibrate an adapter's scores instead of zero-shot ones (``True``: the
            model's shipped adapter for the label set; see
            :func:`dermfm.adapters.resolve_adapter`); the assistant uses this calibration only
            with that adapter.
    """
    from dermfm.assistant.quality import image_measures
    from dermfm.data import read_dataset
    from dermfm.evaluate.calibration import TemperatureScaler
    from dermfm.io import load_image
    from dermfm.zeroshot import ZeroShotClassifier

    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage}")
    unknown = {s.modality for s in sources} - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modality {sorted(unknown)}; use one of {MODALITIES}")
    clf = ZeroShotClassifier(model, label_set, templates, adapter=adapter)
    per_group: dict[str, dict[str, list[Any]]] = {}
    val_images: list[Path] = []
    for source in sources:
        data = read_dataset(source.dataset, source.root)
        parts = {"test": source.test_split}
        if source.calibration_split:
            parts["val"] = source.calibration_split
        group = per_group.setdefault(source.modality, {"val": [], "test": [], "names": []})
        for part, split in parts.items():
            if not data.splits.get(split):
                raise CalibrationError(f"dataset {source.dataset!r}: no {split!r} split")
            logits, y, vectors, kept = _split_logits(clf, data.splits[split], show_progress)
            group[part].append((logits, y, vectors))
            if part == "val":
                group["names"].append(f"{data.name} {split} ({len(y)} images)")
                val_images += [r.image for r in kept]

    calibration = AssistantCalibration(
        model=model.name,
        label_set=clf.label_set.name,
        templates=templates,
        coverage=coverage,
        groups={},
        limits={},
        modality_accuracy={},
        adapter=clf.adapter.identity if clf.adapter else None,
    )
    for modality, group in per_group.items():
        if not group["val"]:
            raise CalibrationError(f"modality {modality!r}: no dataset with a calibration split")
        val_logits = torch.cat([g[0] for g in group["val"]])
        val_y = np.concatenate([g[1] for g in group["val"]])
        scaler = TemperatureScaler().fit(val_logits.numpy(), val_y)
        val_probs = (val_logits.double() / scaler.temperature_).softmax(-1).numpy()
        calibration.groups[modality] = GroupCalibration(
            temperature=scaler.temperature_,
            threshold=_conformal_threshold(val_probs, val_y, coverage),
            n_calibration=len(val_y),
            calibrated_on=" + ".join(group["names"]),
        )
        test_logits = torch.cat([g[0] for g in group["test"]])
        test_y = np.concatenate([g[1] for g in group["test"]])
        probs = calibration.probabilities(test_logits, modality)
        calibration.groups[modality].measured = _set_metrics(calibration, modality, probs, test_y)
    for modality, group in per_group.items():
        vectors = torch.cat([g[2] for g in group["test"]])
        predicted = modality_scores(model, vectors).argmax(dim=1)
        calibration.modality_accuracy[modality] = float(
            (predicted == MODALITIES.index(modality)).float().mean()
        )
    sharpness = [image_measures(load_image(p))["sharpness"] for p in val_images]
    calibration.limits = {"sharpness_min": float(np.percentile(sharpness, percentile))}
    return calibration


__all__ = [
    "CALIBRATION_FILE",
    "MODALITIES",
    "AssistantCalibration",
    "CalibrationError",
    "CalibrationSource",
    "GroupCalibration",
    "calibrate",
    "load_calibration",
    "model_calibration_folder",
]
