"""The one model interface every backend implements, and the shared embedding pipeline."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image

from dermfm.errors import ImageError
from dermfm.io import DEFAULT_MAX_PIXELS, ImageInput, load_image, source_name
from dermfm.progress import progress


@dataclass(frozen=True)
class ModelCard:
    """What a loaded model is and where it came from."""

    name: str
    backend: str
    source: str
    licence: str
    description: str = ""
    citation: str = ""
    loaded_from: str = ""
    #: Separate weights file given with an architecture (``load_model(arch, checkpoint=...)``).
    checkpoint: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-ready mapping."""
        return asdict(self)


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch of inputs, with the inputs that failed kept apart.

    Attributes:
        vectors: ``(len(ok), embed_dim)`` float32, L2-normalised, in input order.
        ok: positions (in the input sequence) of the images that were embedded.
        errors: position -> the :class:`ImageError` that stopped that input.
        sources: printable name of every input, failed ones included.
    """

    vectors: torch.Tensor
    ok: list[int]
    errors: dict[int, ImageError] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


#: Test-time augmentation views as ``(quarter turns, mirrored)``: the eight symmetries of the
#: square (the image, its rotations by 90, 180 and 270 degrees, and the mirror image of each:
#: horizontal and vertical flips and the two diagonal flips).
TTA_VIEWS: tuple[tuple[int, bool], ...] = tuple(
    (turns, mirrored) for mirrored in (False, True) for turns in range(4)
)


def tta_view(pixels: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """Images ``(..., H, W)`` mirrored left-right (when ``mirrored``), then rotated by
    ``turns`` quarter turns counter-clockwise."""
    flipped = pixels.flip(-1) if mirrored else pixels
    return torch.rot90(flipped, turns, dims=(-2, -1))


class DermModel(ABC):
    """A CLIP-style model: image and text towers that embed into one space.

    Subclasses implement :meth:`_encode_pixels` and :meth:`_encode_tokens`; everything users call
    (:meth:`encode_images`, :meth:`encode_texts`, :meth:`embed_images`) lives here once.
    """

    card: ModelCard
    #: ``PIL.Image -> (3, H, W) tensor`` for this model.
    preprocess: Callable[[Image.Image], torch.Tensor]
    #: ``list[str] -> model inputs`` for this model.
    tokenizer: Callable[[list[str]], Any]
    #: Multiplier of cosine similarities in the model's own training (CLIP: 100).
    logit_scale: float = 100.0
    #: Side length in pixels of the model's input images.
    image_size: int = 224
    #: A string that changes whenever the weights change (used to key caches).
    cache_key: str = ""
    device: torch.device = torch.device("cpu")
    #: The wrapped torch module (both towers).
    model: torch.nn.Module
    #: Weight precision: ``fp32`` (default, exact) or ``bf16`` (faster on CPUs with bf16 units,
    #: embeddings differ from fp32 at about 1e-2 relative).
    precision: str = "fp32"
    #: Whether text embeddings of this model may be cached on disk (off while training).
    cacheable: bool = True

    def set_precision(self, precision: str) -> DermModel:
        """Cast fp32 weights to ``bf16`` (one way: rounding cannot be undone; reload for fp32).

        The cache key records the choice, so caches never mix fp32 and bf16 embeddings.
        """
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if precision == self.precision:
            return self
        if precision == "fp32":
            raise ValueError("bf16 weights cannot be turned back into fp32: reload the model")
        self.model.to(torch.bfloat16)
        self.cache_key += ":bf16"
        self.precision = "bf16"
        return self

    @abstractmethod
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features for a ``(N, 3, H, W)`` batch."""

    @abstractmethod
    def _encode_tokens(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text features for a list of strings."""

    @property
    def name(self) -> str:
        """Registry name (or path) of the model."""
        return self.card.name

    @property
    def embed_dim(self) -> int:
        """Dimension of the shared embedding space."""
        if not hasattr(self, "_embed_dim"):
            self._embed_dim = int(self.encode_texts(["skin"]).shape[-1])
        return self._embed_dim

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """L2-normalised float32 embeddings of preprocessed images ``(N, 3, H, W)``.

        ``tta``: test-time augmentation; each image is embedded in the eight views of
        :data:`TTA_VIEWS` (flips and 90-degree rotations of the preprocessed square) and its
        embedding is the re-normalised mean of the eight normalised view embeddings (averaging
        embeddings, not probabilities, so every head that reads embeddings gets it). Eight
        times the compute.
        """
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        pixels = pixels.to(self.device, dtype)
        if not tta:
            return _normalise(self._encode_pixels(pixels)).cpu()
        views = [_normalise(self._encode_pixels(tta_view(pixels, *v))) for v in TTA_VIEWS]
        return _normalise(torch.stack(views).mean(dim=0)).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised float32 embeddings of texts, ``(len(texts), embed_dim)``."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one text")
        chunks = [
            _normalise(self._encode_tokens(texts[i : i + batch_size])).cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks)

    def prepare(
        self, image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False
    ) -> torch.Tensor:
        """One image decoded, validated and preprocessed into this model's ``(3, H, W)`` input
        (``fast_decode``: see :meth:`embed_images`). Raises :class:`ImageError`."""
        rgb = load_image(
            image, max_pixels=max_pixels, draft_size=2 * self.image_size if fast_decode else None
        )
        try:
            return self.preprocess(rgb)
        except Exception as exc:  # a backend's transform failing on one image
            raise ImageError(source_name(image), f"preprocessing failed ({exc})") from exc

    def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int = 32,
        workers: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fast_decode: bool = False,
        tta: bool = False,
        show_progress: bool | None = None,
    ) -> ImageEmbeddings:
        """Decode, preprocess and embed many images; failures are collected, not raised.

        Each batch is decoded by a thread pool (PIL releases the GIL while decoding), see
        :meth:`embed_prepared`. Images are decoded at full resolution, exactly as a plain PIL
        pipeline does (the reference). ``fast_decode=True`` decodes JPEGs whose shorter side is
        at least four times the model input at a reduced DCT scale that keeps at least twice the
        input size: several times faster on camera-size photos, but the embedding is no longer
        bit-identical to the reference (docs/benchmarks.md measures the difference).
        ``tta``: test-time augmentation (see :meth:`encode_images`).
        """
        images = list(images)
        embedded = self.embed_prepared(
            len(images),
            lambda i: self.prepare(images[i], max_pixels, fast_decode),
            batch_size=batch_size,
            workers=workers,
            tta=tta,
            show_progress=show_progress,
        )
        embedded.sources = [source_name(im) for im in images]
        return embedded

    def embed_prepared(
        self,
        count: int,
        prepare: Callable[[int], torch.Tensor],
        *,
        batch_size: int = 32,
        workers: int = 4,
        tta: bool = False,
        show_progress: bool | None = None,
    ) -> ImageEmbeddings:
        """Embed ``count`` inputs, input ``i`` turned into a preprocessed ``(3, H, W)`` tensor by
        ``prepare(i)`` (which raises :class:`ImageError` for a bad input: collected, not raised).

        ``prepare`` runs in a thread pool of ``workers``. When the machine has cores the model's
        threads do not use, the pool works one batch ahead of the model; otherwise it prepares
        between model calls, so decoding never competes with the model's threads for cores.
        Batches of ``batch_size`` run under ``torch.inference_mode``. Every engine (this one,
        the embedding store's, a Ray actor) embeds through here, so they agree bit for bit.
        """
        batches = [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]
        vectors: list[torch.Tensor] = []
        ok: list[int] = []
        errors: dict[int, ImageError] = {}

        def outcome(i: int) -> torch.Tensor | ImageError:
            try:
                return prepare(i)
            except ImageError as exc:
                return exc

        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            progress("Embedding images", count, show_progress) as advance,
        ):

            def submit(idx: list[int]) -> list[Future]:
                return [pool.submit(outcome, i) for i in idx]

            ahead = (os.cpu_count() or 1) > torch.get_num_threads()
            pending = submit(batches[0]) if batches else []
            for b, idx in enumerate(batches):
                current = pending
                has_next = b + 1 < len(batches)
                pending = submit(batches[b + 1]) if has_next and ahead else []
                tensors, kept = [], []
                for i, fut in zip(idx, current, strict=True):
                    result = fut.result()
                    if isinstance(result, ImageError):
                        errors[i] = result
                    else:
                        tensors.append(result)
                        kept.append(i)
                if tensors:
                    vectors.append(self.encode_images(torch.stack(tensors), tta=tta))
                    ok.extend(kept)
                advance(len(idx))
                if has_next and not ahead:
                    pending = submit(batches[b + 1])
        stacked = torch.cat(vectors) if vectors else torch.empty(0, self.embed_dim)
        return ImageEmbeddings(vectors=stacked, ok=ok, errors=errors)
