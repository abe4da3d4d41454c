"""Image transforms for training and evaluation, fit for skin images.

Skin images have no canonical orientation, so training uses flips and 90-degree rotations on top
of a random resized crop; colour jitter stays moderate because colour carries diagnostic signal
(pigment, erythema). A record's ``mask_box`` (e.g. a watermark) is blanked first, in training and
evaluation alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torchvision import transforms
from torchvision.transforms import functional as F

#: Fill colour of masked regions: the ImageNet mean, i.e. zero after normalisation.
MASK_FILL = (124, 116, 104)


def mask_region(image: Image.Image, box: tuple[float, float, float, float] | None) -> Image.Image:
    """A copy of ``image`` with ``box`` (fractions x0, y0, x1, y1) filled with :data:`MASK_FILL`."""
    if not box:
        return image
    out = image.copy()
    w, h = out.size
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle(
        (round(x0 * w), round(y0 * h), round(x1 * w) - 1, round(y1 * h) - 1), fill=MASK_FILL
    )
    return out


class RandomRotate90:
    """Rotate by a random multiple of 90 degrees."""

    def __call__(self, image: Image.Image) -> Image.Image:
        turns = int(torch.randint(4, ()).item())
        return image.rotate(90 * turns, expand=True) if turns else image


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation settings (the ``augment`` section of a training config).

    ``scale`` and ``ratio`` bound the random resized crop (area fraction, aspect ratio); flips and
    90-degree rotations are on by default; colour jitter strengths follow torchvision's
    ``ColorJitter``.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.15
    hue: float = 0.02


def train_transform(
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    aug: Augmentation | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop, flips, 90-degree rotations, moderate colour jitter, normalisation."""
    aug = aug or Augmentation()
    steps: list[Callable] = [
        transforms.RandomResizedCrop(
            size, scale=aug.scale, ratio=aug.ratio, interpolation=F.InterpolationMode.BICUBIC
        )
    ]
    if aug.flips:
        steps += [transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip()]
    if aug.rotate90:
        steps.append(RandomRotate90())
    if max(aug.brightness, aug.contrast, aug.saturation, aug.hue) > 0:
        steps.append(transforms.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)
