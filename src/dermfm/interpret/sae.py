"""Sparse autoencoders (SAEs) on a model's image embeddings.

An SAE rewrites each embedding as a sparse, non-negative combination of learned directions
(latents); DermFM-Zero found that such latents of a dermatology model's image embeddings are
clinically meaningful concepts and artifacts. Two variants:

* ``topk`` (default; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the
  ``k`` largest ReLU pre-activations of each input. Latents that have not fired for
  ``dead_after`` training samples are *dead*; the AuxK loss makes the ``aux_k`` highest-scoring
  dead latents reconstruct what the live ones left over (the residual), which pulls them back.
* ``relu`` (Anthropic's ReLU + L1 recipe): ReLU activations with an L1 penalty on their sum,
  its coefficient warmed up linearly over the first 5% of the steps. There is no AuxK term: a
  dead ReLU latent has no positive pre-activation through which the residual could revive it.

Shared recipe: decoder rows (one per latent) have unit L2 norm, kept so after every optimiser step
(the gradient component parallel to each row is removed before the step, the row renormalised
after it); the encoder starts as the decoder's transpose; the decoder bias starts at the
geometric median (or mean) of the data; Adam at a constant learning rate that decays linearly to
zero over the final 20% of the steps; the loss is the mean squared reconstruction error per
coordinate in the normalised space.

**Input normalisation** (``normalise=True``): inputs are centred on the training data's mean and
divided by one scalar, chosen so that their mean squared norm is ``d_in`` (average per-coordinate
variance 1). The mean and the scale are buffers of the module; :meth:`SparseAutoencoder.encode`
takes and :meth:`SparseAutoencoder.decode` returns vectors of the ORIGINAL embedding space.
Because normalisation is a shift and a single scalar scale, a decoder row maps to the original
space as the row times the scale, so each latent's direction in the original space
(:attr:`SparseAutoencoder.directions`) is its L2-normalised decoder row.

An SAE is saved as a folder: ``sae_config.json`` (format version, :class:`SAEConfig`, metadata
such as the model and the training report) and ``sae.safetensors`` (weights and buffers).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dermfm.cache import atomic_write_bytes
from dermfm.errors import SourceError
from dermfm.progress import progress

__all__ = [
    "CONFIG_FILE",
    "DENSE_THRESHOLD",
    "FORMAT_VERSION",
    "KINDS",
    "WEIGHTS_FILE",
    "SAEConfig",
    "SAETrainReport",
    "SparseAutoencoder",
    "init_sae",
    "load_sae",
    "sae_metrics",
    "save_sae",
    "train_sae",
]

#: Embeddings or activations: a 2-D numpy array or tensor (nested lists work too).
Matrix: TypeAlias = torch.Tensor | np.ndarray
#: SAE variants: TopK (with AuxK) and ReLU + L1.
KINDS = ("topk", "relu")
#: Version of the folder format written by :func:`save_sae`.
FORMAT_VERSION = 1
#: Configuration, metadata and format version of a saved SAE.
CONFIG_FILE = "sae_config.json"
#: Weights and normalisation buffers of a saved SAE.
WEIGHTS_FILE = "sae.safetensors"
#: A latent active on more than this share of the inputs counts as *dense* in :func:`sae_metrics`.
DENSE_THRESHOLD = 0.1
#: Final share of the optimiser steps over which the learning rate decays linearly to zero.
_DECAY_SHARE = 0.2
#: First share of the steps over which the L1 coefficient (ReLU variant) rises from zero.
_L1_WARMUP_SHARE = 0.05
#: Weiszfeld iterations (at most) for the geometric median and their relative tolerance.
_MEDIAN_ITERATIONS, _MEDIAN_TOLERANCE = 200, 1e-7


@dataclass(frozen=True)
class SAEConfig:
    """Architecture and training recipe of a sparse autoencoder.

    Attributes:
        d_in: width of the embeddings.
        n_latents: number of latents (``None``: ``8 * d_in``).
        kind: ``"topk"`` or ``"relu"`` (see the module docstring).
        k: active latents per input (TopK).
        l1: coefficient of the L1 penalty (ReLU): the loss is the per-coordinate MSE in the
            normalised space plus ``l1`` times the mean summed activation divided by
            ``sqrt(d_in)`` (the inputs' RMS norm after normalisation), so a value gives about
            the same sparsity at any width (0.14: about 30 active latents per input, like
            TopK's default, on dermfm-bundled's HAM10000 + DermNet embeddings).
        aux_k: dead latents that reconstruct the residual in the AuxK loss (TopK; ``None``:
            ``d_in // 2``, as in Gao et al., at most ``n_latents``).
        aux_coef: weight of the AuxK loss (0 turns dead-latent revival off). The AuxK loss is
            the residual's reconstruction error divided by the residual's mean squared norm.
        dead_after: a latent that has not fired for this many training SAMPLES (not steps) is
            dead; when the training set is smaller, one epoch (its size) is the threshold.
        normalise: centre inputs on the data mean and scale them to mean squared norm ``d_in``.
        b_dec_init: decoder bias start, ``"median"`` (geometric median, Weiszfeld iterations) or
            ``"mean"``.
        lr: Adam learning rate.
        epochs: passes over the training embeddings.
        batch_size: embeddings per optimiser step.
        seed: seed of the initial weights and of the batch order (CPU training is deterministic).
        weight_decay: decoupled weight decay of the encoder and decoder weights (AdamW).
    """

    d_in: int
    n_latents: int | None = None
    kind: Literal["topk", "relu"] = "topk"
    k: int = 32
    l1: float = 0.14
    aux_k: int | None = None
    aux_coef: float = 1 / 32
    dead_after: int = 10_000
    normalise: bool = True
    b_dec_init: Literal["median", "mean"] = "median"
    lr: float = 2e-3
    epochs: int = 15
    batch_size: int = 256
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        positive = ("d_in", "n_latents", "k", "aux_k", "dead_after", "epochs", "batch_size")
        for name in positive:  # in this order: a default is resolved from checked fields
            if name == "n_latents" and self.n_latents is None:
                object.__setattr__(self, "n_latents", 8 * self.d_in)
            if name == "aux_k" and self.aux_k is None:
                object.__setattr__(self, "aux_k", min(self.n_latents, max(1, self.d_in // 2)))
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SAE config: {name} must be a positive integer, got {value!r}")
        for name in ("l1", "aux_coef", "lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SAE config: {name} must be a number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("SAE config: lr must be > 0")
        if self.kind not in KINDS:
            raise ValueError(f"SAE config: kind must be one of {KINDS}, not {self.kind!r}")
        if self.b_dec_init not in ("median", "mean"):
            raise ValueError(
                f"SAE config: b_dec_init must be 'median' or 'mean', not {self.b_dec_init!r}"
            )
        if self.kind == "topk" and self.k > self.n_latents:  # type: ignore[operator]
            raise ValueError(f"SAE config: k={self.k} exceeds n_latents={self.n_latents}")
        if self.aux_k > self.n_latents:  # type: ignore[operator]
            raise ValueError(f"SAE config: aux_k={self.aux_k} exceeds n_latents={self.n_latents}")
        if not isinstance(self.normalise, bool):
            raise ValueError(f"SAE config: normalise must be true or false, got {self.normalise!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (defaults resolved)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Build from a mapping such as :meth:`to_dict` wrote.

        Raises:
            ValueError: unknown or missing keys, or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SAE config: unknown keys {unknown} (known: {sorted(known)})")
        if "d_in" not in data:
            raise ValueError("SAE config: d_in is missing")
        return cls(**data)


def _rows(x: Matrix, d_in: int, what: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` (numpy array, tensor or nested list) as a finite float32 ``(N, d_in)`` tensor."""
    try:
        t = torch.as_tensor(x).detach().to(device=device, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{what} must be a numeric matrix: {exc}") from exc
    if t.ndim != 2 or t.shape[1] != d_in:
        raise ValueError(f"{what} must have shape (N, {d_in}), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return t


def _geometric_median(x: torch.Tensor) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld)."""
    x64 = x.double()
    median = x64.mean(0)
    spread = float((x64 - median).norm(dim=1).mean()) or 1.0
    for _ in range(_MEDIAN_ITERATIONS):
        weights = 1.0 / (x64 - median).norm(dim=1).clamp_min(1e-12 * spread)
        updated = (weights[:, None] * x64).sum(0) / weights.sum()
        moved = float((updated - median).norm())
        median = updated
        if moved <= _MEDIAN_TOLERANCE * spread:
            break
    return median.float()


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder over ``d_in``-wide embeddings (build with :func:`init_sae` or
    :func:`train_sae`, or load with :func:`load_sae`).

    Parameters: ``w_enc`` ``(n_latents, d_in)``, ``b_enc`` ``(n_latents,)``, ``w_dec``
    ``(n_latents, d_in)`` (row ``i`` is latent ``i``'s unit-norm direction in the normalised
    space) and ``b_dec`` ``(d_in,)``; buffers ``input_mean`` ``(d_in,)`` and ``input_scale``
    (a scalar; zero and one without normalisation). In the normalised space ``u``:
    ``pre = w_enc @ (u - b_dec) + b_enc``, ``acts = TopK/ReLU(pre)``,
    ``u_hat = acts @ w_dec + b_dec``.

    Attributes:
        config: the :class:`SAEConfig`.
        metadata: provenance kept with the weights (model, data, training report...).
    """

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows (from ``generator``), encoder = decoder transpose."""
        super().__init__()
        n, d = int(config.n_latents), config.d_in  # type: ignore[arg-type]
        rows = torch.randn(n, d, generator=generator)
        rows /= rows.norm(dim=1, keepdim=True)
        self.config = config
        self.metadata: dict[str, Any] = {}
        self.w_enc = nn.Parameter(rows.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.w_dec = nn.Parameter(rows)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(()))

    @property
    def n_latents(self) -> int:
        """Number of latents."""
        return int(self.w_dec.shape[0])

    @property
    def directions(self) -> torch.Tensor:
        """``(n_latents, d_in)``: each latent's decoder direction in the original embedding
        space, L2-normalised (detached). With the scalar-scale normalisation this is the
        decoder row itself, renormalised."""
        rows = self.w_dec.detach()
        return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def extra_repr(self) -> str:
        """Shown by ``repr``: the variant and its sizes."""
        cfg = self.config
        sparsity = f"k={cfg.k}" if cfg.kind == "topk" else f"l1={cfg.l1}"
        return f"kind={cfg.kind}, d_in={cfg.d_in}, n_latents={self.n_latents}, {sparsity}"

    def _normalised(self, x: Matrix) -> torch.Tensor:
        x = _rows(x, self.config.d_in, "embeddings", self.w_dec.device)
        return (x - self.input_mean) / self.input_scale

    def _original(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised-space vectors mapped back to the original embedding space."""
        return u * self.input_scale + self.input_mean

    def _pre_activations(self, u: torch.Tensor) -> torch.Tensor:
        # w_enc @ (u - b_dec) + b_enc, with b_dec folded into the bias: the gradient of b_dec
        # then costs a matrix-vector product instead of a batch-sized matrix product.
        return F.linear(u, self.w_enc, self.b_enc - self.w_enc @ self.b_dec)

    def _code(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pre-activations, active values, their latent indices)`` of normalised inputs:
        per row the ``k`` largest pre-activations after ReLU (TopK), or every latent (ReLU)."""
        pre = self._pre_activations(u)
        if self.config.kind == "relu":
            indices = torch.arange(self.n_latents, device=pre.device).expand_as(pre)
            return pre, F.relu(pre), indices
        values, indices = pre.topk(self.config.k, dim=1)
        return pre, F.relu(values), indices

    def _decode_code(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Normalised-space reconstruction of a code from :meth:`_code`."""
        if self.config.kind == "relu":
            return values @ self.w_dec + self.b_dec
        bags = F.embedding_bag(indices, self.w_dec, per_sample_weights=values, mode="sum")
        return bags + self.b_dec

    def encode(self, x: Matrix) -> torch.Tensor:
        """Activations ``(N, n_latents)`` (non-negative, mostly zero) of original-space embeddings.

        TopK: at most ``k`` non-zero entries per row, the ``k`` largest pre-activations after
        ReLU. ReLU: every positive pre-activation.

        Raises:
            ValueError: ``x`` is not a finite ``(N, d_in)`` matrix.
        """
        pre, values, indices = self._code(self._normalised(x))
        return torch.zeros_like(pre).scatter_(1, indices, values)

    def decode(self, activations: Matrix) -> torch.Tensor:
        """Reconstructed embeddings ``(N, d_in)`` in the original space.

        Raises:
            ValueError: ``activations`` is not a finite ``(N, n_latents)`` matrix.
        """
        acts = _rows(activations, self.n_latents, "activations", self.w_dec.device)
        return self._original(acts @ self.w_dec + self.b_dec)

    def forward(self, x: Matrix) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, activations)`` for original-space embeddings ``x``."""
        pre, values, indices = self._code(self._normalised(x))
        acts = torch.zeros_like(pre).scatter_(1, indices, values)
        return self._original(self._decode_code(values, indices)), acts

    def _project_decoder_grad(self) -> None:
        """Remove the part of each decoder row's gradient parallel to the row (keeps the norm)."""
        grad = self.w_dec.grad
        if grad is not None:
            grad.addcmul_(torch.linalg.vecdot(grad, self.w_dec)[:, None], self.w_dec, value=-1)

    @torch.no_grad()
    def _renormalise_decoder(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def init_sae(embeddings: Matrix, config: SAEConfig) -> SparseAutoencoder:
    """An untrained SAE whose normalisation and decoder bias come from ``embeddings``.

    Weights are drawn from ``config.seed``; the decoder bias, mapped back to the original
    space (``sae.decode`` of an all-zero code), is the data's geometric median or mean. The SAE
    is in inference mode (parameters frozen), as every SAE this module returns.

    Raises:
        ValueError: ``embeddings`` is not a finite ``(N, d_in)`` matrix with N >= 2 and
            distinct rows.
    """
    x = _rows(embeddings, config.d_in, "embeddings")
    if x.shape[0] < 2:
        raise ValueError(f"embeddings: an SAE needs at least 2 rows, got {x.shape[0]}")
    sae = SparseAutoencoder(config, torch.Generator().manual_seed(config.seed))
    mean = x.double().mean(0)
    scale = math.sqrt(float(((x.double() - mean) ** 2).sum(1).mean()) / config.d_in)
    if scale == 0:
        raise ValueError("embeddings: all rows are identical; nothing to learn")
    with torch.no_grad():
        if config.normalise:
            sae.input_mean.copy_(mean.float())
            sae.input_scale.fill_(scale)
        u = sae._normalised(x)
        sae.b_dec.copy_(_geometric_median(u) if config.b_dec_init == "median" else u.mean(0))
    return sae.eval().requires_grad_(False)


@dataclass
class SAETrainReport:
    """What :func:`train_sae` did.

    Attributes:
        config: the configuration trained.
        history: one dict per epoch: ``epoch``, ``loss`` (mean training loss), ``fve`` (fraction
            of variance explained over the epoch's batches, as the weights moved), ``l0`` (mean
            active latents per input), ``dead_fraction`` (latents dead by the ``dead_after``
            rule at the epoch's end), ``lr`` (learning rate at its end) and, with validation
            embeddings, ``val_fve``.
        train_metrics: :func:`sae_metrics` of the final SAE on the training embeddings.
        val_metrics: the same on the validation embeddings (``None`` without them).
        seconds: wall-clock training time.
    """

    config: SAEConfig
    history: list[dict[str, float]] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (e.g. as :func:`save_sae` metadata)."""
        return {
            "config": self.config.to_dict(),
            "history": self.history,
            "train_metrics": self.train_metrics,
            "val_metrics": self.val_metrics,
            "seconds": self.seconds,
        }


def _lr_factor(step: int, total: int) -> float:
    """Constant, then linear decay to zero over the final ``_DECAY_SHARE`` of the steps."""
    decay_start = total * (1 - _DECAY_SHARE)
    if step < decay_start:
        return 1.0
    return max(0.0, (total - step) / (total - decay_start))


class _Trainer:
    """One SAE's optimisation state: optimiser, schedule and per-latent firing counters."""

    def __init__(self, sae: SparseAutoencoder, n_rows: int, total_steps: int) -> None:
        cfg = sae.config
        self.sae, self.cfg, self.total_steps, self.step = sae, cfg, total_steps, 0
        self.optimiser = torch.optim.AdamW(
            [
                {"params": [sae.w_enc, sae.w_dec], "weight_decay": cfg.weight_decay},
                {"params": [sae.b_enc, sae.b_dec], "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            eps=6.25e-10,
            fused=True,
        )
        self.dead_after = min(cfg.dead_after, n_rows)
        self.since_fired = torch.zeros(sae.n_latents, dtype=torch.long)

    def dead(self) -> torch.Tensor:
        """Mask of the latents that have not fired for ``dead_after`` samples."""
        return self.since_fired >= self.dead_after

    def _aux_loss(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | None:
        """AuxK: the top ``aux_k`` dead latents (after ReLU) reconstruct the residual."""
        dead_ids = self.dead().nonzero().flatten()
        if self.cfg.aux_coef == 0 or len(dead_ids) == 0:
            return None
        n_aux = min(self.cfg.aux_k, len(dead_ids))  # type: ignore[type-var]
        values, local = pre[:, dead_ids].topk(n_aux, dim=1)
        aux = F.embedding_bag(
            dead_ids[local], self.sae.w_dec, per_sample_weights=F.relu(values), mode="sum"
        )
        return ((aux - residual) ** 2).sum(1).mean() / (residual**2).sum(1).mean().clamp_min(1e-12)

    def train_step(self, u: torch.Tensor) -> tuple[float, float, float]:
        """One optimiser step on normalised inputs; returns (loss, summed squared error, L0)."""
        sae, cfg = self.sae, self.cfg
        factor = _lr_factor(self.step, self.total_steps)
        for group in self.optimiser.param_groups:
            group["lr"] = cfg.lr * factor
        pre, values, indices = sae._code(u)
        u_hat = sae._decode_code(values, indices)
        active = values > 0
        squared = ((u_hat - u) ** 2).sum(1)
        loss = squared.mean() / cfg.d_in
        if cfg.kind == "topk":
            aux = self._aux_loss(pre, (u - u_hat).detach())
            if aux is not None:
                loss = loss + cfg.aux_coef * aux
        else:
            warmup = min(1.0, (self.step + 1) / max(1.0, _L1_WARMUP_SHARE * self.total_steps))
            loss = loss + cfg.l1 * warmup * values.sum(1).mean() / math.sqrt(cfg.d_in)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        sae._project_decoder_grad()
        self.optimiser.step()
        sae._renormalise_decoder()
        self.since_fired += u.shape[0]
        self.since_fired[indices[active]] = 0
        self.step += 1
        return float(loss.detach()) * u.shape[0], float(squared.detach().sum()), float(active.sum())


def train_sae(
    embeddings: Matrix,
    config: SAEConfig,
    *,
    val_embeddings: Matrix | None = None,
    show_progress: bool | None = None,
) -> tuple[SparseAutoencoder, SAETrainReport]:
    """Train a sparse autoencoder on embeddings (see the module docstring for the recipe).

    Deterministic for ``config.seed`` on CPU. The returned SAE is in inference mode (eval, its
    parameters frozen, so :meth:`~SparseAutoencoder.encode` returns plain tensors).

    Args:
        embeddings: ``(N, d_in)`` training embeddings (numpy or torch), e.g. the cached
            ``embed_records(model, records).vectors``.
        config: architecture and recipe; ``config.d_in`` must equal the embeddings' width.
        val_embeddings: optional held-out ``(M, d_in)`` embeddings, scored every epoch.
        show_progress: progress bar per epoch (``None``: only on a terminal).

    Returns:
        The trained SAE and its :class:`SAETrainReport`.

    Raises:
        ValueError: embeddings of the wrong shape, non-finite, fewer than 2 rows or all equal.
    """
    started = time.perf_counter()
    x = _rows(embeddings, config.d_in, "embeddings")
    val = None if val_embeddings is None else _rows(val_embeddings, config.d_in, "val_embeddings")
    sae = init_sae(x, config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():
        u_all = sae._normalised(x)
        total_variance = float(((u_all - u_all.mean(0)) ** 2).sum())
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    trainer = _Trainer(sae, n, config.epochs * steps_per_epoch)
    report = SAETrainReport(config)
    sae.train().requires_grad_(True)
    with progress("Training SAE (epochs)", config.epochs, show_progress) as advance:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(n, generator=generator)
            loss_sum = sse = active = 0.0
            for batch in order.split(config.batch_size):
                loss, squared, l0 = trainer.train_step(u_all[batch])
                loss_sum, sse, active = loss_sum + loss, sse + squared, active + l0
            entry = {
                "epoch": float(epoch),
                "loss": loss_sum / n,
                "fve": 1.0 - sse / total_variance,
                "l0": active / n,
                "dead_fraction": float(trainer.dead().float().mean()),
                "lr": trainer.optimiser.param_groups[0]["lr"],
            }
            if val is not None:
                entry["val_fve"] = sae_metrics(sae, val)["fve"]
            report.history.append(entry)
            advance()
    sae.eval().requires_grad_(False)
    report.train_metrics = sae_metrics(sae, x)
    report.val_metrics = None if val is None else sae_metrics(sae, val)
    report.seconds = time.perf_counter() - started
    return sae, report


@torch.no_grad()
def sae_metrics(
    sae: SparseAutoencoder, embeddings: Matrix, batch_size: int = 4096
) -> dict[str, float]:
    """Reconstruction and sparsity of ``sae`` on embeddings, all in the original space.

    Returns:
        ``fve``: fraction of variance explained, ``1 - sum ||x - x_hat||^2 / sum ||x - mean||^2``
        (mean over these embeddings); ``mse``: mean squared error per coordinate; ``cosine``:
        mean cosine similarity of ``x`` and ``x_hat``; ``l0``: mean number of active latents per
        input; ``dead_fraction``: share of latents never active on these embeddings;
        ``dense_fraction``: share active on more than ``DENSE_THRESHOLD`` (10%) of them.

    Raises:
        ValueError: embeddings of the wrong shape, non-finite, or empty.
    """
    x = _rows(embeddings, sae.config.d_in, "embeddings")
    if x.shape[0] == 0:
        raise ValueError("embeddings: no rows to score")
    mean = x.double().mean(0)
    sse = variance = cosine = 0.0
    fired = torch.zeros(sae.n_latents, dtype=torch.long)
    for xb in x.split(batch_size):
        _, values, indices = sae._code(sae._normalised(xb))
        x_hat = sae._original(sae._decode_code(values, indices)).cpu()
        sse += float(((x_hat.double() - xb.double()) ** 2).sum())
        variance += float(((xb.double() - mean) ** 2).sum())
        cosine += float(F.cosine_similarity(x_hat, xb, dim=1).double().sum())
        fired += torch.bincount(indices[values > 0].cpu(), minlength=sae.n_latents)
    n = x.shape[0]
    rate = fired / n
    return {
        "fve": 1.0 - sse / variance if variance > 0 else float("nan"),
        "mse": sse / (n * sae.config.d_in),
        "cosine": cosine / n,
        "l0": float(fired.sum()) / n,
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_fraction": float((rate > DENSE_THRESHOLD).double().mean()),
    }


def save_sae(
    sae: SparseAutoencoder,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``sae`` to ``folder`` (``sae_config.json`` + ``sae.safetensors``).

    Args:
        sae: the autoencoder.
        folder: destination (created).
        metadata: JSON-serialisable provenance (model name, data, training report...);
            defaults to ``sae.metadata``.
        overwrite: replace the files of an existing non-empty folder.

    Returns:
        The folder.

    Raises:
        SourceError: ``folder`` exists, is not empty, and ``overwrite`` is false.
        TypeError: metadata that JSON cannot encode.
    """
    from safetensors.torch import save

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SourceError(folder, "is a file, not a folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise SourceError(folder, "already exists and is not empty; pass overwrite=True to replace")
    doc = {
        "format": FORMAT_VERSION,
        "config": sae.config.to_dict(),
        "metadata": sae.metadata if metadata is None else metadata,
    }
    text = json.dumps(doc, indent=2) + "\n"
    state = {k: v.detach().float().cpu().contiguous() for k, v in sae.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state))
    atomic_write_bytes(folder / CONFIG_FILE, text.encode("utf-8"))
    return folder


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load an SAE written by :func:`save_sae` (on CPU, in inference mode).

    Raises:
        SourceError: a missing or unreadable file, an unknown format version, an invalid
            configuration, or weights whose names or shapes do not match the configuration
            (the message names the file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise SourceError(path, "missing; is this a folder written by save_sae?")
    try:
        doc = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(config_path, f"unreadable JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise SourceError(config_path, "no 'config' mapping")
    if not isinstance(doc.get("metadata", {}), dict):
        raise SourceError(config_path, "'metadata' is not a mapping")
    if doc.get("format") != FORMAT_VERSION:
        raise SourceError(
            config_path,
            f"format {doc.get('format')!r} is not supported (this dermfm reads {FORMAT_VERSION})",
        )
    try:
        config = SAEConfig.from_dict(doc["config"])
    except (TypeError, ValueError) as exc:
        raise SourceError(config_path, str(exc)) from exc
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise SourceError(weights_path, f"unreadable weights ({exc})") from exc
    sae = SparseAutoencoder(config)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        details = ", ".join(f"{k}: expected {expected.get(k)}, found {found.get(k)}" for k in wrong)
        raise SourceError(weights_path, f"weights do not match {CONFIG_FILE} ({details})")
    sae.load_state_dict(state)
    sae.metadata = dict(doc.get("metadata", {}))
    return sae.eval().requires_grad_(False)
