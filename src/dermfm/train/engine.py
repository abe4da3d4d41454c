"""The training loop: data, objective, optimiser, checkpoints, validation and logs.

Run it with ``dermfm train RECIPE`` (one process) or ``torchrun --nproc-per-node N -m dermfm.train
RECIPE`` (DDP; gloo on CPU, NCCL on GPU). Every sample's randomness is seeded by (seed, epoch,
position) and every micro-batch reseeds torch's RNG from (seed, epoch, batch, rank), so a run
resumed from a checkpoint (model, optimiser, scheduler and data position) continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dermfm.data import (
    Batch,
    CaptionSynthesizer,
    ManifestDataset,
    Record,
    SampleBuilder,
    collate,
    read_manifest,
    read_sources,
    sample_seed,
    train_transform,
)
from dermfm.data.shards import ShardDataset
from dermfm.evaluate.tasks import diagnosis_report, embed_records
from dermfm.knowledge import load_ontology
from dermfm.models.base import DermModel
from dermfm.progress import progress
from dermfm.train.config import (
    PREVIOUS_STAGE,
    ConfigError,
    TrainConfig,
    ValidationSection,
    load_stages,
)
from dermfm.train.losses import (
    clip_loss,
    local_alignment_loss,
    make_loss,
    masked_latent_loss,
    siglip_loss,
    view_weights,
)
from dermfm.train.model import Trainable, build_trainable
from dermfm.train.plots import plot_metrics

#: Views whose text depends on nothing but the diagnosis (false negatives between same labels).
LABEL_VIEWS = ("ontology", "free")


@dataclass
class Position:
    """Where a run is: optimiser steps done, epoch, micro-batches done in that epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``); (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sampling_weights(
    records: Sequence[Record], balance: str, source_weights: dict[str, float] | None = None
) -> np.ndarray | None:
    """Per-record sampling probabilities that flatten label frequencies within each source.

    ``balance`` ``sqrt`` weighs a record by ``1/sqrt(n)`` and ``inverse`` by ``1/n``, where ``n``
    counts the records of its (source, label). Each source then gets its share of the stream:
    ``source_weights[source]``, or for unlisted sources the rest in proportion to record counts.
    """
    if balance == "none":
        return None
    power = 0.5 if balance == "sqrt" else 1.0
    counts = Counter((r.source, r.label) for r in records)
    per_source = Counter(r.source for r in records)
    shares = dict(source_weights or {})
    unknown = set(shares) - set(per_source)
    if unknown:
        raise ConfigError(f"data.source_weights names sources with no records: {sorted(unknown)}")
    rest = max(0.0, 1.0 - sum(shares.values()))
    unlisted = sum(n for s, n in per_source.items() if s not in shares)
    for source, n in per_source.items():
        shares.setdefault(source, rest * n / unlisted if unlisted else 0.0)
    w = np.array([counts[(r.source, r.label)] ** -power for r in records], dtype=np.float64)
    sources = np.array([r.source for r in records])
    for source in per_source:
        sel = sources == source
        w[sel] *= shares[source] / w[sel].sum()
    return w / w.sum()


class EpochSampler:
    """Deterministic per-epoch batches of indices, split across ranks.

    Each global batch of ``batch_size * world`` indices is cut into one slice per rank, so a
    1-process run with the global batch sees exactly the union of what N processes see.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        weights: np.ndarray | None = None,
        samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n, self.batch_size, self.weights = n, batch_size, weights
        self.samples = samples or n
        self.seed, self.rank, self.world = seed, rank, world
        if self.samples < batch_size * world:
            raise ConfigError(
                f"{self.samples} samples per epoch cannot fill one global batch of "
                f"{batch_size} x {world} processes"
            )

    def __len__(self) -> int:
        return self.samples // (self.batch_size * self.world)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches of ``epoch`` as ``(record index, draw position)`` pairs.

        The draw position (the sample's place in the epoch's global order) seeds its
        augmentation and captions, so a record drawn twice gets two different views.
        """
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is not None:
            order = rng.choice(self.n, size=self.samples, replace=True, p=self.weights)
        else:
            reps = math.ceil(self.samples / self.n)
            order = np.concatenate([rng.permutation(self.n) for _ in range(reps)])[: self.samples]
        g = self.batch_size * self.world
        lo = self.rank * self.batch_size
        return [
            [(int(order[d]), d) for d in range(i * g + lo, i * g + lo + self.batch_size)]
            for i in range(len(self))
        ]


class TrainStep(nn.Module):
    """The whole objective as one module (what DDP wraps): batch in, loss terms out."""

    def __init__(self, model: Trainable, config: TrainConfig, views: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = config.loss
        self.label_views = torch.tensor([v in LABEL_VIEWS for v in views])
        self._text_cache: dict[str, torch.Tensor] = {}
        if config.loss.kind != "siglip" and isinstance(model.logit_bias, nn.Parameter):
            model.logit_bias.requires_grad_(False)
        if config.loss.masked_latent_weight > 0:
            if not model.is_dual:
                raise ConfigError("loss.masked_latent_weight needs the dual encoder (model.init)")
            self.teacher = copy.deepcopy(model.net.visual).eval().requires_grad_(False)
            width = model.net.visual.width
            self.predictor = nn.Conv2d(width, width, kernel_size=1)

    def train(self, mode: bool = True) -> TrainStep:
        """Train mode for the model; the teacher always stays in eval mode."""
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()
        return self

    def _texts(
        self, texts: list[list[str | None]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, V, D)`` normalised text features and the ``(B, V)`` mask of present views."""
        unique = sorted({t for row in texts for t in row if t})
        if self.model.text_tower_frozen:
            missing = [t for t in unique if t not in self._text_cache]
            if missing:
                with torch.no_grad():
                    feats = self.model.text_tower(missing).float()
                self._text_cache.update(zip(missing, feats.cpu(), strict=True))
            tower = torch.stack([self._text_cache[t] for t in unique]).to(device)
        else:
            tower = self.model.text_tower(unique)
        emb = F.normalize(self.model.text_head(tower), dim=-1)
        where = {t: i for i, t in enumerate(unique)}
        b, v = len(texts), len(texts[0])
        index = torch.tensor([[where.get(t, 0) if t else 0 for t in row] for row in texts])
        valid = torch.tensor([[bool(t) for t in row] for row in texts])
        return emb[index.to(device).flatten()].reshape(b, v, -1), valid.to(device)

    def _mask(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels with random square patches zeroed, and the mask on the patch grid."""
        p = self.loss_cfg.mask_patch
        b, _, h, w = pixels.shape
        grid = torch.rand(b, math.ceil(h / p), math.ceil(w / p), device=pixels.device)
        mask = grid < self.loss_cfg.mask_ratio
        full = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, :h, :w]
        return pixels.masked_fill(full[:, None], 0.0), mask

    def forward(
        self, pixels: torch.Tensor, texts: list[list[str | None]], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch; ``total`` is what backpropagates."""
        cfg, model = self.loss_cfg, self.model
        if cfg.local_weight > 0:
            image, patches = model.image_features(pixels)
        else:
            image, patches = model.encode_image(pixels), None
        image = F.normalize(image.float(), dim=-1)
        text, valid = self._texts(texts, pixels.device)
        text = text.float()
        labels = labels if cfg.false_negatives == "label" else None
        scale = model.logit_scale.float()
        terms: dict[str, torch.Tensor] = {}
        if cfg.kind == "make":
            terms["contrastive"] = make_loss(
                image, text, valid, scale, labels, self.label_views, cfg.weight_temperature
            )
        else:
            first = valid.float().argmax(1)  # each image's first present view
            single = text[torch.arange(len(text)), first]
            if cfg.kind == "clip":
                terms["contrastive"] = clip_loss(image, single, scale, labels)
            else:
                terms["contrastive"] = siglip_loss(image, single, scale, model.logit_bias, labels)
        total = terms["contrastive"]
        if patches is not None:
            weights = view_weights(text, valid, cfg.weight_temperature)
            terms["local"] = local_alignment_loss(
                F.normalize(patches.float(), dim=-1), text, valid, scale, weights
            )
            total = total + cfg.local_weight * terms["local"]
        if cfg.masked_latent_weight > 0:
            masked, mask = self._mask(pixels)
            predicted = self.predictor(model.feature_map(masked))
            with torch.no_grad():
                target = self.teacher(pixels)
            mask = F.interpolate(mask[:, None].float(), size=target.shape[-2:])[:, 0] > 0.5
            terms["masked_latent"] = masked_latent_loss(predicted.float(), target.float(), mask)
            total = total + cfg.masked_latent_weight * terms["masked_latent"]
        terms["total"] = total
        return terms


def _lr_lambda(warmup: int, total: int, floor: float) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress_))

    return f


class MetricsLog:
    """Long-format ``metrics.csv`` (step, epoch, name, value) plus TensorBoard events."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        new = not self.path.exists()
        self.file = self.path.open("a", newline="", encoding="utf-8")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "epoch", "name", "value"])
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(folder / "tensorboard"))

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Append one row per value."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.csv.writerow([step, epoch, name, f"{value:.6g}"])
            self.tb.add_scalar(name, value, step)
        self.file.flush()

    def close(self) -> None:
        """Flush and close both sinks."""
        if self.enabled:
            self.file.close()
            self.tb.close()


class Trainer:
    """One training run described by a :class:`TrainConfig`.

    ``Trainer(config).fit()`` trains, validates each epoch, checkpoints, and writes the final
    model to ``<output>/model`` in the model's own format (load it with
    :func:`dermfm.load_model`).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        run = config.run
        self.rank, self.world = init_distributed()
        if run.threads:
            torch.set_num_threads(run.threads)
        device = run.device
        if device == "auto":
            device = (
                f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                if torch.cuda.is_available()
                else "cpu"
            )
        self.device = torch.device(device)
        bf16 = run.precision == "bf16" or (run.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.output = Path(run.output)
        self.is_main = self.rank == 0
        torch.manual_seed(run.seed)
        self.model = build_trainable(config.model, str(self.device))
        train_records, val_records = self._records()
        if train_records:
            self.labels = sorted({r.label for r in train_records if r.label})
        else:  # streamed shards: any ontology node may occur
            self.labels = [node.id for node in load_ontology()]
        label_index = {label: i for i, label in enumerate(self.labels)}
        captions = CaptionSynthesizer(tuple(config.data.views))
        show = run.progress and self.is_main
        builder = SampleBuilder(self._transform(0), captions, label_index, run.seed)
        d = config.data
        self.train_set: ManifestDataset | ShardDataset
        if d.shards:
            if d.balance != "none":
                raise ConfigError(
                    "data.balance needs random access: not available with data.shards"
                )
            self.train_set = ShardDataset(
                d.shards,
                builder,
                seed=run.seed,
                rank=self.rank,
                world=self.world,
                splits=[d.train_split],
            )
            samples = d.samples_per_epoch or self.train_set.total
            if not samples:
                raise ConfigError("data.shards without an index file needs data.samples_per_epoch")
            self.sampler = EpochSampler(
                samples, config.optim.batch_size, seed=run.seed, rank=self.rank, world=self.world
            )
        else:
            self.train_set = ManifestDataset(train_records, builder, d.preload_side, show)
            self.sampler = EpochSampler(
                len(self.train_set),
                config.optim.batch_size,
                weights=sampling_weights(self.train_set.records, d.balance, d.source_weights),
                samples=d.samples_per_epoch,
                seed=run.seed,
                rank=self.rank,
                world=self.world,
            )
        self.val_records = val_records
        self.steps_per_epoch = len(self.sampler) // config.optim.accum_steps
        if self.steps_per_epoch == 0:
            raise ConfigError("optim.accum_steps is larger than the micro-batches of one epoch")
        self.total_steps = self.steps_per_epoch * config.optim.epochs
        self.step_module = TrainStep(self.model, config, config.data.views).to(self.device)
        self.ddp: nn.Module = self.step_module
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.step_module, device_ids=ids)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(
                config.optim.warmup_steps, self.total_steps, config.optim.min_lr / config.optim.lr
            ),
        )
        self.position = Position()
        self.log = MetricsLog(self.output, self.is_main)

    # ----------------------------------------------------------------- setup
    def _transform(self, epoch: int) -> Any:
        """The training transform of ``epoch`` (its size from ``model.resize_schedule``)."""
        size = self.model.image_size
        for start, scheduled in sorted(self.config.model.resize_schedule.items()):
            if epoch >= int(start):
                size = int(scheduled)
        return train_transform(size, self.model.mean, self.model.std, self.config.augment)

    def _records(self) -> tuple[list[Record], list[Record]]:
        d = self.config.data
        if d.sources:
            records = read_sources(d.root, d.sources)
        elif d.manifest:
            records = read_manifest(d.manifest)
        else:  # shards stream the training split; validation comes from val_manifest
            records = read_manifest(d.val_manifest) if d.val_manifest else []
        train = [r for r in records if r.split == d.train_split and not d.shards]
        val = [r for r in records if r.split == d.val_split]
        if not train and not d.shards:
            raise ConfigError(f"no records in split {d.train_split!r}")
        return train, val

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        lrs = {id(p): o.image_tower_lr for p in self.model.image_tower_parameters()}
        lrs.update({id(p): o.text_tower_lr for p in self.model.text_tower_parameters()})
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in self.step_module.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and "logit" not in name
            lr = lrs.get(id(p))
            groups.setdefault((decay, o.lr if lr is None else lr), []).append(p)
        return torch.optim.AdamW(
            [
                {"params": ps, "weight_decay": o.weight_decay if decay else 0.0, "lr": lr}
                for (decay, lr), ps in groups.items()
            ],
            betas=(0.9, 0.98),
            eps=1e-6,
        )

    # ------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """Where the latest checkpoint is written."""
        return self.output / "checkpoints" / "last.pt"

    def save_checkpoint(self) -> None:
        """Write model, optimiser, scheduler and data position (main process, atomically)."""
        if not self.is_main:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.step_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": self.position.__dict__,
            "config": self.config.to_dict(),
            "world": self.world,
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint`."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.step_module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])

    # ---------------------------------------------------------------- running
    def _micro_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        self.train_set.set_epoch(epoch)
        self.train_set.builder.transform = self._transform(epoch)
        if isinstance(self.train_set, ShardDataset):
            yield from self._shard_batches(start)
            return
        loader = DataLoader(
            self.train_set,
            batch_sampler=self.sampler.batches(epoch)[start:],
            collate_fn=collate,
            num_workers=self.config.data.workers,
        )
        yield from loader

    def _shard_batches(self, start: int) -> Iterator[Batch]:
        """This rank's micro-batches from the shard stream; wraps around within the epoch so that
        every rank yields the same number of batches (DDP needs them in step)."""
        size = self.config.optim.batch_size
        self.train_set.set_skip(start * size, batch_size=size)
        loader = DataLoader(
            self.train_set,
            batch_size=size,
            collate_fn=collate,
            num_workers=self.config.data.workers,
        )
        wanted, produced = len(self.sampler) - start, 0
        while produced < wanted:
            before = produced
            for batch in loader:
                yield batch
                produced += 1
                if produced >= wanted:
                    return
            if produced == before:
                raise ConfigError(f"{self.config.data.shards}: no training samples in the shards")
            self.train_set.set_skip(0)

    def train_step(self, micro: list[Batch], epoch: int) -> dict[str, float]:
        """One optimiser step over ``accum_steps`` micro-batches; returns mean loss terms."""
        totals: dict[str, float] = {}
        for i, batch in enumerate(micro):
            batch_no = self.position.batch + i
            torch.manual_seed(
                sample_seed(self.config.run.seed, epoch, batch_no * self.world + self.rank)
            )
            sync = i == len(micro) - 1 or self.world == 1
            ctx = nullcontext() if sync else self.ddp.no_sync()  # type: ignore[operator]
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype
                else nullcontext()
            )
            pixels = batch.pixels.to(self.device)
            if self.model.is_dual:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with ctx, autocast:
                terms = self.ddp(pixels, batch.texts, batch.labels.to(self.device))
            with ctx:
                (terms["total"] / len(micro)).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / len(micro)
        if self.config.optim.grad_clip:
            params = [p for p in self.step_module.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():  # CLIP's clamp: the scale never exceeds 100
            self.model.logit_scale.clamp_(0, math.log(100))
        return totals

    def fit(self) -> Path | None:
        """Train to the configured end; returns the exported model folder (main process)."""
        cfg = self.config
        if cfg.run.resume == "auto" and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)
        elif cfg.run.resume not in ("auto", "none", ""):
            self.load_checkpoint(cfg.run.resume)
        accum = cfg.optim.accum_steps
        max_steps = cfg.run.max_steps or self.total_steps
        while self.position.epoch < cfg.optim.epochs and self.position.step < max_steps:
            epoch = self.position.epoch
            self.step_module.train()
            remaining = (self.steps_per_epoch * accum - self.position.batch) // accum
            desc = f"Epoch {epoch + 1}/{cfg.optim.epochs}"
            with progress(desc, remaining, cfg.run.progress and self.is_main) as advance:
                micro: list[Batch] = []
                tic = time.perf_counter()
                for batch in self._micro_batches(epoch, self.position.batch):
                    micro.append(batch)
                    if len(micro) < accum:
                        continue
                    terms = self.train_step(micro, epoch)
                    images = sum(len(b.labels) for b in micro) * self.world
                    self.position.batch += len(micro)
                    self.position.step += 1
                    micro = []
                    rate = images / (time.perf_counter() - tic)
                    tic = time.perf_counter()
                    self.log.log(
                        self.position.step,
                        epoch,
                        {
                            **{f"train/{k}": v for k, v in terms.items()},
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/logit_scale": float(self.model.logit_scale.detach().exp()),
                            "train/images_per_s": rate,
                        },
                    )
                    advance()
                    if self.position.step % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    if (
                        self.position.step >= max_steps
                        or self.position.batch >= self.steps_per_epoch * accum
                    ):
                        break
            if self.position.batch >= self.steps_per_epoch * accum:
                self.position.epoch += 1
                self.position.batch = 0
                if self.position.epoch % cfg.validation.every_epochs == 0:
                    self.log.log(self.position.step, epoch, self.validate())
            self.save_checkpoint()
        return self.export()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Zero-shot metrics of the current weights on each source's validation records."""
        results: dict[str, float] = {}
        if not self.is_main or not self.val_records:
            return results
        self.step_module.eval()
        model = self.model.as_model(f"training:{time.time_ns()}")
        metrics = validation_metrics(model, self.val_records, self.config.validation)
        results.update({f"val/{k}": v for k, v in metrics.items()})
        self.step_module.train()
        return results

    def export(self) -> Path | None:
        """Write the final model to ``<output>/model`` (main process only)."""
        if dist.is_initialized():
            dist.barrier()
        if not self.is_main:
            return None
        folder = self.output / "model"
        metadata = {
            "recipe": self.config.to_dict(),
            "steps": self.position.step,
            "labels_seen": self.labels,
            "samples_per_epoch": self.sampler.samples,
        }
        path = self.model.save(folder, metadata)
        (self.output / "summary.json").write_text(
            json.dumps({"model": str(path), **metadata}, indent=2, default=str)
        )
        self.log.close()
        plot_metrics(self.output / "metrics.csv")
        return path


def validation_metrics(
    model: DermModel, records: Sequence[Record], section: ValidationSection
) -> dict[str, float]:
    """Zero-shot metrics (``source/metric``) of ``model`` on the ``records`` of each source
    that ``section.label_sets`` names, scored on that source's label set: what training
    validates with, and what ``scripts/compare_validation.py`` compares models with."""
    results: dict[str, float] = {}
    for source, label_set in section.label_sets.items():
        chosen = [r for r in records if r.source == source]
        if not chosen:
            continue
        split = embed_records(model, chosen)
        with suppress(ValueError):  # no record of this source carries a label-set label
            report = diagnosis_report(model, split, label_set, section.templates, n_boot=0)
            results.update({f"{source}/{k}": e.value for k, e in report.items()})
    return results


def train(config: TrainConfig) -> Path | None:
    """Run one training to the end; the exported model folder (``None`` on non-main ranks)."""
    return Trainer(config).fit()


def train_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Path | None:
    """Run every stage of a recipe in order (see :func:`load_stages`); the last model folder.

    A finished stage (its ``summary.json`` exists) is not run again, so a stopped run continues
    where it was, each unfinished stage resuming from its own checkpoint.
    """
    stages = load_stages(recipe, overrides)
    folder: Path | None = None
    for number, (_name, config) in enumerate(stages):
        if config.model.init == PREVIOUS_STAGE:
            config.model.init = str(Path(stages[number - 1][1].run.output) / "model")
        output = Path(config.run.output)
        folder = output / "model" if (output / "summary.json").exists() else train(config)
    return folder
