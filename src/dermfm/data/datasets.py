"""Datasets that turn records into training samples: pixels, one text per view, a label.

Every random choice for a sample (crop, flips, jitter, caption templates) is seeded by
``(seed, epoch, index)``, so a sample is the same whichever rank, worker or resumed run builds it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from dermfm.data.captions import CaptionSynthesizer
from dermfm.data.manifest import Record
from dermfm.data.transforms import mask_region
from dermfm.errors import ImageError
from dermfm.io import load_image
from dermfm.progress import progress


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to one sample of one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        pixels: ``(B, 3, H, W)`` images.
        texts: ``B`` lists with one text (or ``None``) per view.
        labels: ``(B,)`` class index in the trainer's label list, ``-1`` when unknown.
        indices: ``(B,)`` dataset positions of the samples.
    """

    pixels: torch.Tensor
    texts: list[list[str | None]]
    labels: torch.Tensor
    indices: torch.Tensor


def collate(samples: Sequence[dict[str, Any]]) -> Batch:
    """Stack samples from :class:`SampleBuilder` into a :class:`Batch`."""
    return Batch(
        pixels=torch.stack([s["pixels"] for s in samples]),
        texts=[s["texts"] for s in samples],
        labels=torch.tensor([s["label"] for s in samples], dtype=torch.long),
        indices=torch.tensor([s["index"] for s in samples], dtype=torch.long),
    )


class SampleBuilder:
    """Record + decoded image -> sample dict, with per-sample seeded randomness.

    Args:
        transform: PIL image -> ``(3, H, W)`` tensor (random transforms use torch's RNG,
            which is forked and seeded per sample).
        captions: text-view synthesiser.
        label_index: ontology node id -> class index (records with other labels get ``-1``).
        seed: run seed.
    """

    def __init__(
        self,
        transform: Callable[[Image.Image], torch.Tensor],
        captions: CaptionSynthesizer,
        label_index: dict[str, int],
        seed: int = 0,
    ) -> None:
        self.transform = transform
        self.captions = captions
        self.label_index = label_index
        self.seed = seed
        self.epoch = 0

    def __call__(
        self, record: Record, image: Image.Image, index: int, draw: int | None = None
    ) -> dict[str, Any]:
        """The sample of ``record`` (dataset position ``index``) in the current epoch.

        ``draw`` is the sample's position in the epoch's order when a sampler draws with
        replacement: each draw of the same record then gets its own augmentation and captions
        (seeding by ``index`` alone would repeat identical views within an epoch).
        """
        seed = sample_seed(self.seed, self.epoch, index if draw is None else -1 - draw)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = self.transform(mask_region(image, record.mask_box))
        return {
            "pixels": pixels,
            "texts": self.captions(record, random.Random(seed)),
            "label": self.label_index.get(record.label or "", -1),
            "index": index,
        }


def _shrink(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


class ManifestDataset(Dataset):
    """Map-style dataset over manifest records.

    Args:
        records: the records (one split).
        builder: turns a record and its image into a sample.
        preload_side: when set, every image is decoded once up front and kept in memory with
            its shorter side reduced to this many pixels (fast epochs on small machines).

    Unreadable images are reported once and dropped (``self.skipped``), never silently used.
    """

    def __init__(
        self,
        records: Sequence[Record],
        builder: SampleBuilder,
        preload_side: int | None = None,
        show_progress: bool | None = None,
    ) -> None:
        self.builder = builder
        self.preload_side = preload_side
        self.skipped: list[ImageError] = []
        self.records: list[Record] = []
        self._images: list[Image.Image] = []
        with progress("Loading images", len(records), show_progress) as advance:
            for record in records:
                try:
                    image = load_image(record.image) if preload_side else None
                except ImageError as exc:
                    self.skipped.append(exc)
                else:
                    self.records.append(record)
                    if image is not None:
                        self._images.append(_shrink(image, preload_side))  # type: ignore[arg-type]
                advance()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose randomness samples are built with."""
        self.builder.epoch = epoch

    def image(self, index: int) -> Image.Image:
        """The (preloaded or freshly decoded) image of record ``index``."""
        if self._images:
            return self._images[index]
        return load_image(self.records[index].image)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample by dataset position, or by ``(position, draw)`` from :class:`EpochSampler`."""
        index, draw = key if isinstance(key, tuple) else (key, None)
        return self.builder(self.records[index], self.image(index), index, draw)
