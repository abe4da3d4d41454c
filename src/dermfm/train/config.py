"""Training configuration: a YAML file (configs as data) with ``section.key=value`` overrides.

Packaged recipes live in ``dermfm/train/recipes/`` (``bundled.yaml`` reproduces the bundled
model); ``dermfm train RECIPE_OR_FILE --set optim.lr=1e-4`` runs one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dermfm.data.transforms import Augmentation
from dermfm.errors import DermfmError


class ConfigError(DermfmError):
    """A training configuration that cannot be used (names the file or the key)."""


@dataclass
class ModelSection:
    """What to train.

    ``init``: ``parts`` builds a fresh dual encoder from the pretrained towers shipped on PyPI
    (EfficientNet-Lite0 + all-MiniLM-L6-v2); anything else is given to
    :func:`dermfm.load_model` (a registry name such as ``dermlip-vit-b16``, an ``hf-hub:`` id, a
    local folder), so any registry model can be fine-tuned.
    """

    init: str = "parts"
    #: Training resolution: fresh parts default to 160; a loaded dual encoder keeps its own
    #: unless set (then it is re-sized, e.g. warm-starting the 160 px bundled model at 224).
    image_size: int | None = None
    #: Progressive resizing: ``{first epoch: training size}`` (0-based epochs; e.g.
    #: ``{0: 160, 3: 192, 5: 224}``); epochs before the first entry, and runs without a schedule,
    #: train at ``image_size``. Validation and the exported model use ``image_size``.
    resize_schedule: dict[int, int] = field(default_factory=dict)
    embed_dim: int = 256
    freeze_image: bool = False
    freeze_text: bool = True
    #: Dual encoder only: leading EfficientNet blocks (and the stem) kept frozen.
    frozen_image_blocks: int = 0
    #: Dual encoder with ``freeze_text``: this many top MiniLM layers train all the same (in
    #: eval mode, no dropout); the model folder stores only those layers of the text tower.
    text_trainable_layers: int = 0


@dataclass
class DataSection:
    """Where training and validation records come from.

    Exactly one of ``sources`` (folders under ``root`` described by ``dermfm/data/sources.yaml``),
    ``manifest`` (CSV/JSONL) or ``shards`` (WebDataset tar shards, brace patterns allowed).
    """

    root: str = "../shared/data"
    sources: list[str] = field(default_factory=list)
    manifest: str | None = None
    shards: str | None = None
    #: Manifest/sources whose split is ``val`` give the validation set (with ``shards``, give
    #: ``val_manifest``).
    val_manifest: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    views: list[str] = field(default_factory=lambda: ["ontology", "concept", "metadata", "free"])
    #: Per-(source, label) sampling weight: ``none``, ``sqrt`` (1/sqrt(count)) or ``inverse``.
    balance: str = "none"
    #: Share of each source in the sampled stream (e.g. ``{ham10000: 0.5}``); sources left out
    #: share the rest in proportion to their record counts. Applies when ``balance`` is not
    #: ``none``.
    source_weights: dict[str, float] = field(default_factory=dict)
    #: Samples drawn per epoch (default: the number of training records).
    samples_per_epoch: int | None = None
    #: Decode images once and keep them in memory at this shorter side (``null``: no preload).
    preload_side: int | None = None
    workers: int = 0


@dataclass
class LossSection:
    """Objective: ``clip``, ``siglip`` or ``make`` (multi-view), plus optional extra terms."""

    kind: str = "make"
    #: Remove same-diagnosis false negatives (``label``) or not (``none``).
    false_negatives: str = "label"
    weight_temperature: float = 0.5
    local_weight: float = 0.0
    masked_latent_weight: float = 0.0
    mask_ratio: float = 0.5
    #: Side in pixels of the square patches masked for masked latent modelling.
    mask_patch: int = 32


@dataclass
class OptimSection:
    """Optimiser and schedule (AdamW, linear warmup then cosine decay to ``min_lr``)."""

    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-3
    #: Learning rate of the image tower's pretrained weights (``null``: same as ``lr``).
    image_tower_lr: float | None = None
    #: Learning rate of the text tower's trained pretrained layers (``null``: same as ``lr``).
    text_tower_lr: float | None = None
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float | None = 1.0


@dataclass
class RunSection:
    """Run bookkeeping."""

    output: str = "runs/dermfm"
    seed: int = 0
    device: str = "auto"
    #: ``auto``: bf16 autocast on CUDA, fp32 on CPU; or ``fp32`` / ``bf16``.
    precision: str = "auto"
    checkpoint_every: int = 200
    #: ``auto`` continues from ``output/checkpoints/last.pt`` when it exists.
    resume: str = "auto"
    threads: int | None = None
    #: Stop after this many optimiser steps (for tests and smoke runs).
    max_steps: int | None = None
    progress: bool = True


@dataclass
class ValidationSection:
    """Per-epoch zero-shot validation: val records of each source scored on a label set."""

    label_sets: dict[str, str] = field(default_factory=dict)
    templates: str = "skin8"
    every_epochs: int = 1


@dataclass
class TrainConfig:
    """A whole training run (see the ``recipes`` folder for examples)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: Augmentation = field(default_factory=Augmentation)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    validation: ValidationSection = field(default_factory=ValidationSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested mapping (what checkpoints and model folders record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a nested mapping; unknown sections or keys are errors."""
        sections = {f.name: f for f in fields(cls)}
        kwargs = {}
        for name, values in (data or {}).items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section {name!r}; known: {list(sections)}")
            section_cls = sections[name].default_factory  # type: ignore[misc]
            known = {f.name for f in fields(section_cls)}
            bad = set(values or {}) - known
            if bad:
                raise ConfigError(f"{source}: unknown keys in {name!r}: {sorted(bad)}")
            kwargs[name] = section_cls(**(values or {}))
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Reject inconsistent settings with a message naming the key."""
        d = self.data
        if sum(bool(x) for x in (d.sources, d.manifest, d.shards)) != 1:
            raise ConfigError(
                f"{source}: set exactly one of data.sources, data.manifest, data.shards"
            )
        if self.loss.kind not in ("clip", "siglip", "make"):
            raise ConfigError(f"{source}: loss.kind must be clip, siglip or make")
        if d.balance not in ("none", "sqrt", "inverse"):
            raise ConfigError(f"{source}: data.balance must be none, sqrt or inverse")
        if self.model.freeze_image and self.model.freeze_text:
            raise ConfigError(f"{source}: both towers frozen leaves nothing but heads to train")
        if self.model.text_trainable_layers and not self.model.freeze_text:
            raise ConfigError(
                f"{source}: model.text_trainable_layers applies to a frozen text tower "
                "(model.freeze_text: true); with freeze_text false every layer trains"
            )
        if self.optim.batch_size < 2 or self.optim.accum_steps < 1:
            raise ConfigError(f"{source}: optim.batch_size must be >= 2 and accum_steps >= 1")
        if self.run.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"{source}: run.precision must be auto, fp32 or bf16")


def recipe_path(name: str) -> Path:
    """A packaged recipe by name (``bundled``) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return Path(str(resources.files("dermfm.train") / "recipes" / f"{name}.yaml"))


#: ``model.init`` of a stage that starts from the model the stage before it wrote.
PREVIOUS_STAGE = "previous"


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: training config not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections")
    return copy.deepcopy(data)


def _apply(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    return data


def load_stages(
    name_or_path: str | Path, overrides: Sequence[str] = ()
) -> list[tuple[str, TrainConfig]]:
    """The stages of a recipe, in order, each with its name; overrides apply to every stage.

    A recipe is either one configuration (one stage, named ``main``) or ``stages:``, a list of
    ``{name, <sections>}`` merged section by section over the recipe's other sections. A stage
    whose ``model.init`` is ``previous`` starts from the model the stage before it wrote, and
    each stage writes to ``<run.output>/<name>``.
    """
    path = recipe_path(str(name_or_path))
    data = _read_recipe(path)
    stages = data.pop("stages", None)
    if stages is None:
        return [("main", TrainConfig.from_dict(_apply(data, overrides), str(path)))]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list")
    out: list[tuple[str, TrainConfig]] = []
    for number, stage in enumerate(stages, 1):
        stage = dict(stage or {})
        name = str(stage.pop("name", f"stage{number}"))
        merged = copy.deepcopy(data)
        for section, values in stage.items():
            merged.setdefault(section, {}).update(values or {})
        config = TrainConfig.from_dict(_apply(merged, overrides), f"{path} (stage {name})")
        if config.model.init == PREVIOUS_STAGE and not out:
            raise ConfigError(f"{path}: stage {name} starts from 'previous' but is the first")
        config.run.output = str(Path(config.run.output) / name)
        out.append((name, config))
    return out


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a one-stage recipe and apply ``section.key=value`` overrides (values parsed as
    YAML); for a recipe with stages, the last stage (see :func:`load_stages`)."""
    return load_stages(name_or_path, overrides)[-1][1]
