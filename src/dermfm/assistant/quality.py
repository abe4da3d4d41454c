"""Image quality and relevance checks run before the model says anything about a photo.

Pixel measures (size, contrast, colour, sharpness, brightness, clipping) catch blank, black and
white, blurry, dark and washed-out photos. Relevance (does the photo show skin at all?) does not
depend on the model being consulted: :class:`SkinReference` compares general-purpose ImageNet
features (the EfficientNet-Lite0 that ships with dermfm) of the photo with those of reference
skin photos (kNN similarity, a standard out-of-distribution score), and refuses photos less
similar than a low percentile of held-out skin photos. dermfm ships a reference built from its
development data (``skin_reference.safetensors``; ``scripts/build_skin_reference.py``).
A photo that fails gets a request for a better photo instead of a guess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dermfm.assistant.report import QualityCheck, QualityProblem
from dermfm.knowledge.files import read_document
from dermfm.progress import progress

#: Side of the square grey image the pixel measures are computed on (resolution-independent).
MEASURE_SIZE = 224
#: The skin reference that ships with dermfm.
SKIN_REFERENCE_FILE = Path(__file__).with_name("skin_reference.safetensors")


@cache
def quality_settings() -> dict[str, Any]:
    """The packaged ``quality.yaml``: fixed limits and the message of each problem."""
    return read_document(Path(__file__).with_name("quality.yaml"))


def image_measures(image: Image.Image) -> dict[str, float]:
    """Pixel measures of an RGB image: ``sharpness`` (variance of the 4-neighbour Laplacian of
    the grey image resized to 224x224, 0..255 scale), ``brightness`` (mean, 0..1),
    ``dark_fraction`` / ``bright_fraction`` (pixels under 0.05 / over 0.95), ``contrast`` (pixel
    standard deviation, 0..1), ``saturation`` (mean HSV saturation, 0..1) and ``min_side``."""
    size = (MEASURE_SIZE, MEASURE_SIZE)
    small = np.asarray(image.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    small_rgb = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    lap = (
        4 * small[1:-1, 1:-1]
        - small[:-2, 1:-1]
        - small[2:, 1:-1]
        - small[1:-1, :-2]
        - small[1:-1, 2:]
    )
    unit = small / 255.0
    saturation = np.asarray(small_rgb.convert("HSV"), dtype=np.float64)[..., 1] / 255.0
    return {
        "sharpness": float(lap.var()),
        "brightness": float(unit.mean()),
        "dark_fraction": float((unit < 0.05).mean()),
        "bright_fraction": float((unit > 0.95).mean()),
        "contrast": float(unit.std()),
        "saturation": float(saturation.mean()),
        "min_side": float(min(image.size)),
    }


def _problem(
    kind: str, value: float | None = None, threshold: float | None = None
) -> QualityProblem:
    message = quality_settings()["messages"][kind]
    return QualityProblem(kind=kind, message=message, value=value, threshold=threshold)  # type: ignore[arg-type]


def pixel_problems(
    measures: Mapping[str, float], limits: Mapping[str, float] | None = None
) -> list[QualityProblem]:
    """Problems found in the pixel measures.

    ``limits`` (from a model's calibration) may set a calibrated ``sharpness_min``; the fixed
    limits of ``quality.yaml`` cover the rest. A too-small or blank image reports only that.
    """
    limits = {**quality_settings()["limits"], **(limits or {})}
    if measures["min_side"] < limits["min_side"]:
        return [_problem("too_small", measures["min_side"], limits["min_side"])]
    if measures["contrast"] < limits["contrast_min"]:
        return [_problem("blank", measures["contrast"], limits["contrast_min"])]
    found: list[QualityProblem] = []
    if measures["saturation"] < limits["saturation_min"]:
        found.append(_problem("greyscale", measures["saturation"], limits["saturation_min"]))
    if measures["sharpness"] < limits["sharpness_min"]:
        found.append(_problem("blurry", measures["sharpness"], limits["sharpness_min"]))
    if (
        measures["brightness"] < limits["brightness_min"]
        or measures["dark_fraction"] > limits["clipped_max"]
    ):
        found.append(_problem("underexposed", measures["brightness"], limits["brightness_min"]))
    if (
        measures["brightness"] > limits["brightness_max"]
        or measures["bright_fraction"] > limits["clipped_max"]
    ):
        found.append(_problem("overexposed", measures["brightness"], limits["brightness_max"]))
    return found


class SkinReference:
    """Is a photo of skin? kNN similarity of ImageNet features to reference skin photos.

    Args:
        features: ``(N, 1280)`` L2-normalised EfficientNet-Lite0 (ImageNet) features of
            reference skin photos.
        threshold: photos whose score is below it are "not skin".
        k: neighbours averaged in the score.
        info: provenance (sources, percentile, measured pass rates).
    """

    image_size = 224

    def __init__(
        self,
        features: torch.Tensor,
        threshold: float,
        k: int = 10,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if features.ndim != 2 or len(features) < k:
            raise ValueError(f"need at least k={k} reference features, got {tuple(features.shape)}")
        self.features = torch.nn.functional.normalize(features.float(), dim=-1)
        self.threshold = float(threshold)
        self.k = int(k)
        self.info = dict(info or {})
        self._tower: torch.nn.Module | None = None

    def _encoder(self) -> torch.nn.Module:
        if self._tower is None:
            from dermfm.models.bundled import EfficientNetTower

            self._tower = EfficientNetTower(self.image_size, pretrained=True).eval()
        return self._tower

    @torch.inference_mode()
    def embed(
        self, images: Sequence[Image.Image], show_progress: bool | None = None
    ) -> torch.Tensor:
        """``(N, 1280)`` L2-normalised ImageNet features of RGB images."""
        from torchvision import transforms

        transform = transforms.Compose(
            [
                transforms.Resize(self.image_size),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        tower, out = self._encoder(), []
        with progress("Skin reference features", len(images), show_progress) as advance:
            for start in range(0, len(images), 32):
                chunk = images[start : start + 32]
                pixels = torch.stack([transform(im.convert("RGB")) for im in chunk])
                out.append(torch.nn.functional.normalize(tower(pixels).mean(dim=(2, 3)), dim=-1))
                advance(len(chunk))
        return torch.cat(out)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of each feature row to its ``k`` nearest references."""
        return (features.float() @ self.features.T).topk(self.k, dim=1).values.mean(dim=1)

    def score(self, image: Image.Image) -> float:
        """The relevance score of one photo."""
        return float(self.scores(self.embed([image]))[0])

    @classmethod
    def build(
        cls,
        references: Sequence[Image.Image],
        held_out: Sequence[Image.Image],
        k: int = 10,
        percentile: float = 0.5,
        info: Mapping[str, Any] | None = None,
        show_progress: bool | None = None,
    ) -> SkinReference:
        """A reference from skin photos; the threshold is the ``percentile`` (in %) of the
        scores of other, held-out skin photos (about that share of real photos is refused)."""
        probe = cls(torch.ones(k, 1280), 0.0, k)
        features = probe.embed(list(references), show_progress)
        built = cls(features, 0.0, k, {**(info or {}), "percentile": percentile})
        built._tower = probe._tower
        held = built.scores(built.embed(list(held_out), show_progress)).numpy()
        built.threshold = float(np.percentile(held, percentile))
        return built

    def save(self, path: str | Path) -> Path:
        """Write features (float16) and settings to one safetensors file."""
        from safetensors.torch import save_file

        meta = {"threshold": str(self.threshold), "k": str(self.k), "info": json.dumps(self.info)}
        save_file({"features": self.features.half().contiguous()}, str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path = SKIN_REFERENCE_FILE) -> SkinReference:
        """Read a saved reference (the packaged one by default)."""
        from safetensors import SafetensorError, safe_open

        from dermfm.errors import ModelNotAvailableError

        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                features = handle.get_tensor("features")
            return cls(
                features,
                float(meta["threshold"]),
                int(meta["k"]),
                json.loads(meta.get("info", "{}")),
            )
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise ModelNotAvailableError(f"{path}: not a usable skin reference ({exc})") from exc


def check_quality(
    image: Image.Image,
    reference: SkinReference | None = None,
    limits: Mapping[str, float] | None = None,
) -> QualityCheck:
    """Quality and relevance of one photo.

    Args:
        image: the decoded RGB image.
        reference: skin reference for the relevance check (``None``: not checked, and the
            report says so).
        limits: calibrated pixel limits (``sharpness_min``).
    """
    measures = image_measures(image)
    problems = pixel_problems(measures, limits)
    checked = reference is not None and not any(p.kind in ("blank", "too_small") for p in problems)
    if checked:
        score = reference.score(image)  # type: ignore[union-attr]
        measures["relevance"] = score
        if score < reference.threshold:  # type: ignore[union-attr]
            problems.append(_problem("not_skin", score, reference.threshold))  # type: ignore[union-attr]
    return QualityCheck(
        usable=not problems, problems=problems, measures=measures, relevance_checked=checked
    )


def unreadable(reason: str) -> QualityCheck:
    """The check of an input that could not be decoded at all."""
    problem = _problem("unreadable")
    return QualityCheck(
        usable=False,
        problems=[problem.model_copy(update={"message": f"{reason}. {problem.message}"})],
    )


__all__ = [
    "MEASURE_SIZE",
    "SKIN_REFERENCE_FILE",
    "SkinReference",
    "check_quality",
    "image_measures",
    "pixel_problems",
    "quality_settings",
    "unreadable",
]
