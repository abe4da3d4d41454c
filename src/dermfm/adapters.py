"""Adapters: a head fitted on labelled images over a model's frozen image embeddings, blended
with the zero-shot text classifier and calibrated on a validation split.

An :class:`Adapter` scores an L2-normalised image embedding ``x`` against the classes ``c`` of
a label set by three terms (Tip-Adapter, Zhang et al., ECCV 2022, plus a linear probe)::

    logit_c(x) = s * cos(x, t_c)                                    zero-shot text classifier
               + alpha * sum_i exp(-beta * (1 - x . k_i)) [y_i = c]  image-prototype cache
               + gamma * log p_probe(c | x)                          class-balanced linear probe
    p(c | x)   = softmax_c(logit_c(x) / T)

* ``s`` is the model's logit scale and ``t_c`` the class's prompt-ensemble text embedding
  (:class:`~dermfm.zeroshot.ZeroShotClassifier`);
* the cache keys ``k_i`` are the L2-normalised embeddings of at most ``cache_shots`` training
  images per class (stored in float16) and its values their one-hot labels ``y_i``;
* the probe is :class:`~dermfm.evaluate.probe.LinearProbe` with ``class_weight="balanced"``,
  its regularisation ``C`` chosen by balanced accuracy on the validation split;
* ``alpha``, ``beta`` and ``gamma`` are chosen on a grid by **balanced accuracy on the
  validation split, among the blends whose log-loss after temperature scaling is no worse than
  zero-shot's** (ties: the lower log-loss). The grid includes ``alpha = gamma = 0``, plain
  zero-shot, so on the validation split an adapter is never worse than zero-shot by either
  measure; without the log-loss condition, balanced accuracy alone picked blends that shift
  probability to rare classes and calibrate worse than raw zero-shot (the assistant's 130
  classes: validation log-loss 2.77 against 2.02). The grid is relative to the data (``beta``
  in units of the median ``1 - cos`` between validation images and cache keys, ``alpha`` and
  ``gamma`` in units of the spread of the zero-shot logits over that of their term); the
  stored values are absolute;
* ``T`` is a :class:`~dermfm.evaluate.calibration.TemperatureScaler` fitted on the validation
  split last, so the probabilities are calibrated (``score_kind`` ``adapter-calibrated``).

Classes of the label set without training images get the mean of the other classes' cache and
probe terms: they keep their zero-shot evidence and nothing else.

An adapter is one safetensors file: cache keys and labels, probe weights, a fingerprint of the
model (the embeddings of a fixed synthetic image and a fixed text), and its provenance in the
header (model name and cache key, label set and classes, a hash of the training images and
labels, validation and test metrics). It is refused, with a message saying why, by a model
that embeds differently or a label set whose classes differ.

:func:`fit_adapter` fits one on labelled records; ``dermfm adapt`` is its command line.
A model folder may ship adapters in ``adapters/<label set>.safetensors`` (the bundled model's
are built by ``scripts/build_bundled_adapters.py``); ``adapter=True`` finds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from dermfm.errors import SourceError
from dermfm.evaluate.probe import DEFAULT_CS, LinearProbe, subsample

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from dermfm.data import DatasetRecords, Record
    from dermfm.knowledge import LabelSet
    from dermfm.models.base import DermModel

__all__ = [
    "ALPHA_GRID",
    "BETA_GRID",
    "GAMMA_GRID",
    "SELECTION",
    "SHIPPED_FOLDER",
    "Adapter",
    "AdapterError",
    "AdapterInfo",
    "AdapterSpec",
    "adapter_splits",
    "data_hash",
    "fit_adapter",
    "load_adapter",
    "metrics_rows",
    "model_fingerprint",
    "read_labelled",
    "resolve_adapter",
    "select_adapter",
    "shipped_adapter_path",
]

#: Header field that marks a dermfm adapter file, and the layout version this code writes.
FORMAT, FORMAT_VERSION = "dermfm-adapter", 1
#: Folder of a model folder that holds its shipped adapters, one ``<label set>.safetensors``.
SHIPPED_FOLDER = "adapters"
SUFFIX = ".safetensors"
#: Grids of the blend weights, relative to the data (see the module doc).
ALPHA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
BETA_GRID: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
GAMMA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: How the blend weights are chosen (stored with each adapter).
SELECTION = (
    "alpha, beta, gamma by balanced accuracy on the validation split among the blends whose "
    "log-loss after temperature scaling is no worse than zero-shot's (ties: lower log-loss); "
    "probe C by balanced accuracy on the validation split; temperature by log-loss on the "
    "validation split"
)
#: Lowest cosine between an adapter's model fingerprint and the loading model's (bf16 weights
#: stay above 0.9999; retrained weights fall far below).
MIN_FINGERPRINT_COSINE = 0.999
#: Split fractions for labelled images that come without train/val splits (a clinic's folder);
#: records of one group (patient, lesion) stay on one side.
AUTO_SPLIT: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}
#: Share of the training groups held out for tuning when the data has no validation split.
VAL_SHARE = 0.2
_SALT = "dermfm-adapter"
_FINGERPRINT_TEXT = "a dermatology photograph of a skin lesion"


class AdapterError(SourceError):
    """An adapter file that cannot be used (unreadable, or fitted for another model or label
    set); the message names the file and the problem."""


@dataclass
class AdapterInfo:
    """Provenance of an adapter, stored in its file's header.

    Attributes:
        model: name of the model whose embeddings it was fitted on.
        model_key: that model's cache key (weights identity on the fitting machine).
        embed_dim: embedding dimension.
        label_set: label set name.
        classes: the label set's classes in column order (``label``, ``name``, ``node``).
        templates: prompt templates of the zero-shot part it was tuned with.
        data_hash: SHA-256 of the sorted training ``image SHA-256<TAB>label`` lines.
        fitted_on: which data and splits (a sentence).
        n_train / n_val: images fitted on / tuned and calibrated on.
        tta: whether the embeddings averaged test-time augmentation views.
        selection: how the blend weights were chosen (:data:`SELECTION`).
        metrics: ``split -> {"n", "zero_shot": {...}, "adapter": {...}}`` on val and test.
        dermfm_version: version of dermfm that fitted it.
    """

    model: str
    model_key: str
    embed_dim: int
    label_set: str
    classes: list[dict[str, Any]]
    templates: list[str]
    data_hash: str
    fitted_on: str
    n_train: int
    n_val: int
    tta: bool = False
    selection: str = SELECTION
    metrics: dict[str, Any] = field(default_factory=dict)
    dermfm_version: str = ""

    @property
    def labels(self) -> list[str]:
        """Class labels in column order."""
        return [str(c["label"]) for c in self.classes]


def _neutral(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``values`` (N, C) with the columns of classes not ``present`` set to the row mean of the
    present ones (so an unseen class neither gains nor loses against the average class)."""
    if bool(present.all()):
        return values
    out = values.clone()
    out[:, ~present] = values[:, present].mean(dim=1, keepdim=True)
    return out


def _spread(z: torch.Tensor) -> float:
    """Mean over rows of the standard deviation over classes."""
    return float(z.std(dim=1).mean()) if z.shape[1] > 1 else 0.0


def _balanced_accuracy(y: np.ndarray, logits: torch.Tensor) -> float:
    from dermfm.evaluate.metrics import balanced_accuracy

    return balanced_accuracy(y, logits.argmax(dim=1).numpy())


class Adapter:
    """Tip-Adapter cache + class-balanced linear probe + zero-shot, calibrated (see the module
    doc), scikit-learn style: :meth:`fit`, then :meth:`predict_proba` / :meth:`logits`.

    Every method takes the image embeddings ``x`` (N, D) and their cosine similarities to the
    class text embeddings ``similarities`` (N, C), as
    :meth:`~dermfm.zeroshot.ZeroShotClassifier.similarities` returns them; the classifier calls
    the adapter itself when given ``adapter=``.

    Args:
        cache_shots: most training images per class in the cache.
        Cs: probe regularisation grid (:class:`~dermfm.evaluate.probe.LinearProbe`).
        alpha_grid, beta_grid, gamma_grid: relative blend-weight grids.
        seed: seed of the cache's per-class sample and of the probe.

    Attributes (after ``fit`` or :meth:`load`):
        probe_, keys_, values_: the probe and the cache (keys ``(M, D)``, class indices ``(M,)``).
        alpha_, beta_, gamma_, temperature_, logit_scale_: the absolute blend parameters.
        n_classes_: columns of the label set.
        selection_: the chosen relative weights and their validation scores.
        info: provenance (:class:`AdapterInfo`), set by :func:`fit_adapter` or :meth:`load`.
        fingerprint: ``(2, D)`` model fingerprint (:func:`model_fingerprint`).
        path: the file it was loaded from or saved to.
    """

    probe_: LinearProbe
    keys_: torch.Tensor
    values_: torch.Tensor
    alpha_: float
    beta_: float
    gamma_: float
    temperature_: float
    logit_scale_: float
    n_classes_: int

    def __init__(
        self,
        cache_shots: int = 16,
        Cs: Sequence[float] = DEFAULT_CS,
        alpha_grid: Sequence[float] = ALPHA_GRID,
        beta_grid: Sequence[float] = BETA_GRID,
        gamma_grid: Sequence[float] = GAMMA_GRID,
        seed: int = 0,
    ) -> None:
        if cache_shots < 1:
            raise ValueError(f"cache_shots must be >= 1, got {cache_shots}")
        if not beta_grid or min(beta_grid) <= 0:
            raise ValueError(f"beta_grid must hold positive numbers, got {list(beta_grid)}")
        if min(*alpha_grid, *gamma_grid) < 0:
            raise ValueError("alpha_grid and gamma_grid must not hold negative numbers")
        self.cache_shots = cache_shots
        self.Cs = tuple(Cs)
        self.alpha_grid, self.beta_grid, self.gamma_grid = (
            tuple(alpha_grid),
            tuple(beta_grid),
            tuple(gamma_grid),
        )
        self.seed = seed
        self.selection_: dict[str, float] = {}
        self.info: AdapterInfo | None = None
        self.fingerprint: torch.Tensor | None = None
        self.path: Path | None = None

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        train_x: torch.Tensor,
        train_y: ArrayLike,
        val_x: torch.Tensor,
        val_y: ArrayLike,
        val_similarities: torch.Tensor,
        logit_scale: float,
    ) -> Adapter:
        """Fit the cache and the probe on the training embeddings, then choose the blend and
        the temperature on the validation split.

        Args:
            train_x, val_x: L2-normalised embeddings ``(N, D)``.
            train_y, val_y: class indices into the label set's columns.
            val_similarities: ``(M, C)`` cosine similarities of ``val_x`` to the class text
                embeddings (their column count is the label set's size).
            logit_scale: multiplier of the similarities (the model's logit scale).

        Raises:
            ValueError: fewer than two training classes, mismatched shapes, or labels outside
                the label set.
        """
        from dermfm.evaluate.calibration import TemperatureScaler

        tx, vx = train_x.float(), val_x.float()
        ty, vy = np.asarray(train_y, dtype=np.int64), np.asarray(val_y, dtype=np.int64)
        n_classes = int(val_similarities.shape[1])
        for what, x, y in (("train", tx, ty), ("val", vx, vy)):
            if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"{what}: {tuple(x.shape)} embeddings for {y.shape[0]} labels")
            if y.min() < 0 or y.max() >= n_classes:
                raise ValueError(f"{what} labels must be class indices in [0, {n_classes})")
        if val_similarities.shape[0] != vx.shape[0]:
            raise ValueError("val_similarities must have one row per validation embedding")
        rows = subsample(ty, shots=self.cache_shots, seed=self.seed)
        self.keys_ = torch.nn.functional.normalize(tx[torch.from_numpy(rows)], dim=-1)
        self.keys_ = self.keys_.half().float()  # as stored, so tuning sees what ships
        self.values_ = torch.from_numpy(ty[rows])
        self.n_classes_ = n_classes
        self.logit_scale_ = float(logit_scale)
        self.probe_ = LinearProbe(Cs=self.Cs, seed=self.seed, class_weight="balanced").fit(
            tx.numpy(), ty, vx.numpy(), vy
        )
        self.alpha_ = self.gamma_ = 0.0
        self.beta_ = 1.0
        zero_shot = self.logit_scale_ * val_similarities.float()
        probe = self.probe_logits(vx)
        scale = max(float(np.median((1.0 - vx @ self.keys_.T).numpy())), 1e-6)
        caches: dict[float, torch.Tensor] = {}  # cache term per absolute beta
        #: (balanced accuracy, log-loss after temperature scaling, temperature, weights)
        candidates: list[tuple[float, float, float, dict[str, float]]] = []

        def blend(weights: dict[str, float]) -> torch.Tensor:
            cache = caches[weights["beta"]]
            return zero_shot + weights["alpha"] * cache + weights["gamma"] * probe

        for b in self.beta_grid:
            self.beta_ = b / scale
            caches[self.beta_] = self.cache_logits(vx)
            spreads = (_spread(zero_shot), _spread(caches[self.beta_]), _spread(probe))
            for a in self.alpha_grid:
                if a == 0 and b != self.beta_grid[0]:
                    continue  # without the cache beta changes nothing
                for g in self.gamma_grid:
                    weights = {
                        "alpha_scale": a,
                        "beta_scale": b,
                        "gamma_scale": g,
                        "alpha": a * spreads[0] / spreads[1] if a and spreads[1] else 0.0,
                        "beta": self.beta_,
                        "gamma": g * spreads[0] / spreads[2] if g and spreads[2] else 0.0,
                    }
                    blended = blend(weights)
                    temperature = TemperatureScaler().fit(blended.numpy(), vy).temperature_
                    nll = _log_loss(vy, blended / temperature)
                    score = _balanced_accuracy(vy, blended)
                    candidates.append((score, nll, temperature, weights))
        scaled = zero_shot / TemperatureScaler().fit(zero_shot.numpy(), vy).temperature_
        zero_shot_nll = _log_loss(vy, scaled)
        allowed = [c for c in candidates if c[1] <= zero_shot_nll + 1e-9] or candidates
        best_score, nll, temperature, weights = max(allowed, key=lambda c: (c[0], -c[1]))
        if temperature <= TemperatureScaler().bounds[0] * 1.001:
            raise ValueError(
                "the validation images are separated perfectly (the temperature fit reached "
                "its lower bound), so they cannot calibrate the adapter: were they seen in "
                "training (by the model or the adapter)? Tune on more images that neither saw"
            )
        self.alpha_, self.beta_, self.gamma_ = weights["alpha"], weights["beta"], weights["gamma"]
        self.temperature_ = float(temperature)
        self.selection_ = {
            **{k: float(v) for k, v in weights.items()},
            "val_balanced_accuracy": best_score,
            "val_log_loss": nll,
            "val_zero_shot_log_loss": zero_shot_nll,
            "candidates": float(len(candidates)),
        }
        return self

    # ------------------------------------------------------------------ scoring

    def _check_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise ValueError("this Adapter is not fitted: call fit() or load it from a file")

    def cache_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` Tip-Adapter cache term ``exp(-beta (1 - x K^T)) L``, with ``L`` the
        one-hot labels of the cache keys ``K`` (classes without keys: the row mean)."""
        affinity = torch.exp(-self.beta_ * (1.0 - x.float() @ self.keys_.T))
        onehot = torch.nn.functional.one_hot(self.values_, self.n_classes_).float()
        present = onehot.sum(dim=0) > 0
        return _neutral(affinity @ onehot, present)

    def probe_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` log-probabilities of the linear probe (classes it never saw: the row
        mean)."""
        proba = self.probe_.predict_proba(x.float().numpy())
        classes = torch.as_tensor(self.probe_.classes_, dtype=torch.long)
        out = torch.zeros(x.shape[0], self.n_classes_)
        out[:, classes] = torch.from_numpy(np.log(np.clip(proba, 1e-12, 1.0))).float()
        present = torch.zeros(self.n_classes_, dtype=torch.bool)
        present[classes] = True
        return _neutral(out, present)

    def logits(self, x: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` calibrated logits: the blend of the module doc divided by ``T``."""
        self._check_fitted()
        blended = self.logit_scale_ * similarities.float()
        if self.alpha_:
            blended = blended + self.alpha_ * self.cache_logits(x)
        if self.gamma_:
            blended = blended + self.gamma_ * self.probe_logits(x)
        return blended / self.temperature_

    def predict_proba(self, x: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` calibrated class probabilities."""
        return self.logits(x, similarities).softmax(dim=-1)

    # ------------------------------------------------------------------ identity

    def describe(self) -> str:
        """Short identity for outputs: file (or label set), model and data hash."""
        info = self._info()
        name = self.path.name if self.path else info.label_set
        return f"{name} ({info.label_set}, {info.model}, data {info.data_hash[:12]})"

    def _info(self) -> AdapterInfo:
        if self.info is None:
            raise ValueError("this Adapter has no provenance: fit it with fit_adapter()")
        return self.info

    @property
    def identity(self) -> str:
        """A hash of what fixes its scores (model, training data, classes, fitted blend): what
        a calibration of its scores records (``dermfm assistant calibrate --adapter``)."""
        from dermfm.cache import content_key

        info = self._info()
        return content_key("adapter", info.model_key, info.data_hash, info.labels, self.params())

    def params(self) -> dict[str, Any]:
        """The fitted blend: absolute ``alpha``, ``beta``, ``gamma``, ``temperature``,
        ``logit_scale``, ``n_classes``, ``cache_shots`` and the ``selection`` scores."""
        self._check_fitted()
        return {
            "alpha": self.alpha_,
            "beta": self.beta_,
            "gamma": self.gamma_,
            "temperature": self.temperature_,
            "logit_scale": self.logit_scale_,
            "n_classes": self.n_classes_,
            "cache_shots": self.cache_shots,
            "probe_C": self.probe_.C_,
            "cache_size": int(self.values_.shape[0]),
            "selection": self.selection_,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: file, provenance and parameters (not the arrays)."""
        return {
            "file": str(self.path) if self.path else None,
            "info": asdict(self._info()),
            "params": self.params(),
        }

    @property
    def label_set(self) -> LabelSet:
        """The label set it was fitted for (ontology links kept where the ontology knows
        them), e.g. ``ZeroShotClassifier(model, adapter.label_set, adapter=adapter)``."""
        from dermfm.knowledge import LabelClass, LabelSet, load_ontology

        info, ontology = self._info(), load_ontology()
        return LabelSet(
            name=info.label_set,
            classes=tuple(
                LabelClass(
                    label=str(c["label"]),
                    name=str(c["name"]),
                    node=c["node"] if c.get("node") in ontology else None,
                )
                for c in info.classes
            ),
            description=f"the classes of adapter {self.path or info.label_set}",
        )

    def check_label_set(self, label_set: LabelSet) -> None:
        """Raise :class:`AdapterError` unless ``label_set`` has the adapter's classes, in order."""
        info = self._info()
        theirs = [c.label for c in label_set.classes]
        if theirs == info.labels:
            return
        missing = [c for c in info.labels if c not in theirs]
        extra = [c for c in theirs if c not in info.labels]
        detail = (
            "the same classes in another order"
            if not missing and not extra
            else f"missing {missing[:5]}, extra {extra[:5]}"
        )
        raise AdapterError(
            self.path or "adapter",
            f"fitted for label set {info.label_set!r} ({len(info.labels)} classes); label set "
            f"{label_set.name!r} has other classes ({detail}): use --labels {info.label_set} "
            "(labels=adapter.label_set), or fit an adapter for this label set",
        )

    def check_model(self, model: DermModel) -> None:
        """Raise :class:`AdapterError` unless ``model`` embeds images and texts as the model
        the adapter was fitted on did (same dimension, fingerprint cosines >= 0.999)."""
        info = self._info()
        where = self.path or "adapter"
        refit = f"; fit one for it: dermfm adapt DATA --model {model.name} -o FILE"
        if model.embed_dim != info.embed_dim:
            raise AdapterError(
                where,
                f"fitted on {info.embed_dim}-d embeddings of model {info.model!r}; model "
                f"{model.name!r} gives {model.embed_dim}-d ones{refit}",
            )
        assert self.fingerprint is not None
        cosines = (model_fingerprint(model) * self.fingerprint).sum(dim=1).tolist()
        if min(cosines) < MIN_FINGERPRINT_COSINE:
            raise AdapterError(
                where,
                f"fitted on embeddings of model {info.model!r} (cache key {info.model_key}); "
                f"model {model.name!r} ({model.cache_key}) embeds differently (fingerprint "
                f"cosines image {cosines[0]:.4f}, text {cosines[1]:.4f}; "
                f"{MIN_FINGERPRINT_COSINE} needed){refit}",
            )

    def check(self, model: DermModel, label_set: LabelSet) -> None:
        """:meth:`check_label_set` and :meth:`check_model`."""
        self.check_label_set(label_set)
        self.check_model(model)

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the adapter as one safetensors file (never over an existing file unless
        ``overwrite``); returns the path."""
        from safetensors.torch import save

        from dermfm.cache import atomic_write_bytes

        self._check_fitted()
        info = self._info()
        if self.fingerprint is None:
            raise ValueError("this Adapter has no model fingerprint: fit it with fit_adapter()")
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: pass overwrite=True (--overwrite) to replace")
        tensors = {
            "cache.keys": self.keys_.half().contiguous(),
            "cache.values": self.values_.long().contiguous(),
            "fingerprint": self.fingerprint.float().contiguous(),
            **{
                f"probe.{k}": torch.from_numpy(np.ascontiguousarray(v))
                for k, v in self.probe_.to_arrays().items()
            },
        }
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "info": json.dumps(asdict(info)),
            "params": json.dumps(self.params()),
        }
        atomic_write_bytes(target, save(tensors, metadata=header))
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | Path) -> Adapter:
        """Read an adapter file; :class:`AdapterError` naming the file and the problem."""
        from safetensors import SafetensorError, safe_open

        file = Path(path)
        if not file.is_file():
            raise AdapterError(file, "adapter file not found")
        try:
            with safe_open(str(file), framework="pt") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterError(file, f"not a safetensors file ({exc})") from exc
        if header.get("format") != FORMAT:
            raise AdapterError(file, f"not a dermfm adapter (no format: {FORMAT} in its header)")
        if int(header.get("format_version", "0")) > FORMAT_VERSION:
            raise AdapterError(
                file,
                f"written by a newer dermfm (adapter format {header['format_version']}, this "
                f"dermfm reads {FORMAT_VERSION}): upgrade dermfm",
            )
        try:
            info = AdapterInfo(**json.loads(header["info"]))
            params = json.loads(header["params"])
            adapter = cls(cache_shots=int(params["cache_shots"]))
            adapter.probe_ = LinearProbe.from_arrays(
                {k[6:]: v.numpy() for k, v in tensors.items() if k.startswith("probe.")}
            )
            adapter.keys_ = tensors["cache.keys"].float()
            adapter.values_ = tensors["cache.values"].long()
            adapter.fingerprint = tensors["fingerprint"].float()
            for name in ("alpha", "beta", "gamma", "temperature", "logit_scale"):
                setattr(adapter, f"{name}_", float(params[name]))
            adapter.n_classes_ = int(params["n_classes"])
            adapter.selection_ = dict(params.get("selection", {}))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise AdapterError(file, f"damaged adapter file ({type(exc).__name__}: {exc})") from exc
        if adapter.n_classes_ != len(info.classes) or not adapter.temperature_ > 0:
            raise AdapterError(file, "damaged adapter file (classes or temperature do not fit)")
        adapter.info, adapter.path = info, file
        return adapter


def _log_loss(y: np.ndarray, logits: torch.Tensor) -> float:
    return float(-torch.log_softmax(logits.double(), dim=1)[torch.arange(len(y)), y].mean())


load_adapter = Adapter.load

#: What ``adapter=`` accepts: an :class:`Adapter`, its file, ``True`` (the model's shipped
#: adapter for the label set, when there is one), or ``None`` / ``False`` (none).
AdapterSpec: TypeAlias = "Adapter | str | Path | bool | None"


def shipped_adapter_path(model: DermModel, label_set: LabelSet) -> Path | None:
    """``<model folder>/adapters/<label set>.safetensors`` when the model was loaded from a
    folder that has one (the bundled model's ship in the package), else ``None``."""
    if not model.card.loaded_from or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", label_set.name):
        return None
    loaded = Path(model.card.loaded_from)
    folder = loaded if loaded.is_dir() else loaded.parent
    path = folder / SHIPPED_FOLDER / f"{label_set.name}{SUFFIX}"
    return path if path.is_file() else None


def resolve_adapter(model: DermModel, label_set: LabelSet, spec: AdapterSpec) -> Adapter | None:
    """The adapter that ``spec`` names for ``model`` and ``label_set``, checked.

    ``None`` / ``False``: none. ``True``: the model's shipped adapter for the label set
    (:func:`shipped_adapter_path`), or none when there is none or it was fitted for other
    classes of the same name (a user's label set file called ``ham7.yaml``). A path or an
    :class:`Adapter`: that one.

    Raises:
        AdapterError: an unreadable file, or an adapter fitted for another model (a shipped
            one too: its model's weights changed without it being refitted) or, when named
            explicitly, for other classes.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        path = shipped_adapter_path(model, label_set)
        if path is None:
            return None
        adapter = Adapter.load(path)
        if adapter._info().labels != [c.label for c in label_set.classes]:
            return None
        adapter.check_model(model)
        return adapter
    adapter = spec if isinstance(spec, Adapter) else Adapter.load(spec)  # type: ignore[arg-type]
    adapter.check(model, label_set)
    return adapter


def select_adapter(
    specs: Sequence[str | Path], model: DermModel, label_set: LabelSet
) -> Adapter | None:
    """The first of several adapter files fitted for ``label_set``'s classes, checked against
    ``model`` (``"shipped"`` stands for the model's shipped adapter of the label set); ``None``
    when none is (``dermfm eval --adapter`` gives each dataset the adapter of its label set).

    Raises:
        AdapterError: an unreadable file, or one for these classes but another model.
    """
    for spec in specs:
        if str(spec) == "shipped":
            found = resolve_adapter(model, label_set, True)
        else:
            found = Adapter.load(spec)
            if found._info().labels != [c.label for c in label_set.classes]:
                continue
            found.check_model(model)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- fingerprint


def _fingerprint_image() -> Any:
    """A fixed synthetic RGB picture (smooth colour waves), identical on every machine."""
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256] / 255.0
    channels = [
        0.5 + 0.5 * np.sin(7.0 * x + 3.0 * y),
        0.5 + 0.5 * np.cos(5.0 * x * y + 2.0 * x),
        0.5 + 0.5 * np.sin(9.0 * np.hypot(x - 0.5, y - 0.5)),
    ]
    pixels = np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels)


def model_fingerprint(model: DermModel) -> torch.Tensor:
    """``(2, D)`` embeddings of a fixed synthetic image and a fixed text: what an adapter
    checks to know a model embeds as the one it was fitted on (weights retrained or another
    model give other vectors; bf16 weights the same to 1e-4). Cached by model."""
    from dermfm import cache

    def compute() -> torch.Tensor:
        image = model.encode_images(model.preprocess(_fingerprint_image())[None])[0]
        return torch.stack([image, model.encode_texts([_FINGERPRINT_TEXT])[0]])

    key = cache.content_key("adapter-fingerprint-v1", model.cache_key)
    return cache.cached_tensor("fingerprints", key, compute, model.cacheable)


# --------------------------------------------------------------------------- data


def read_labelled(data: str | Path, root: str | Path | None = None) -> DatasetRecords:
    """Labelled images as :func:`dermfm.data.read_dataset` reads them: a dataset spec (name
    or YAML) under ``root``; or, for convenience, a folder of class folders, a folder holding
    ``labels.csv`` (``file,label[,split]``) or such a CSV file itself."""
    from dermfm.data import load_dataset_spec, read_dataset

    path = Path(data)
    if path.is_dir():
        spec = "generic_csv" if (path / "labels.csv").is_file() else "generic_image_folder"
        return read_dataset({**load_dataset_spec(spec), "name": path.name}, path)
    if path.suffix.lower() == ".csv" and path.is_file():
        doc = {**load_dataset_spec("generic_csv"), "name": path.stem, "labels_file": path.name}
        return read_dataset(doc, path.parent)
    return read_dataset(str(data), root if root is not None else ".")


def adapter_splits(
    splits: Mapping[str, list[Record]],
    train: str = "train",
    val: str = "val",
    test: str = "test",
) -> tuple[list[Record], list[Record], list[Record], str]:
    """``(train, val, test, how)`` records for fitting, tuning and reporting an adapter.

    The data's own splits when it has ``train`` and ``val``; without ``val``, a
    :data:`VAL_SHARE` of the training groups becomes the validation split; without ``train``
    (a folder of class folders), all records are split :data:`AUTO_SPLIT` by group (a group's
    records, e.g. one patient's, stay together). ``how`` says which, for the provenance.
    """
    from dermfm.data import hash_split

    def by_hash(records: Sequence[Record], fractions: dict[str, float]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in fractions}
        for r in records:
            out[hash_split(r.key, fractions, _SALT)].append(r)
        return out

    if splits.get(train):
        if splits.get(val):
            parts = {"train": splits[train], "val": splits[val]}
            how = f"the {train!r} and {val!r} splits"
        else:
            parts = by_hash(splits[train], {"train": 1.0 - VAL_SHARE, "val": VAL_SHARE})
            how = f"the {train!r} split, {VAL_SHARE:.0%} of its groups held out for tuning"
        parts["test"] = list(splits.get(test, []))
        how += f"; {test!r} split for the report" if parts["test"] else "; no test split"
    else:
        pooled = [r for records in splits.values() for r in records]
        parts = by_hash(pooled, AUTO_SPLIT)
        how = "all images split {} by group".format(
            "/".join(f"{k} {v:.0%}" for k, v in AUTO_SPLIT.items())
        )
    return parts["train"], parts["val"], parts["test"], how


def data_hash(records: Sequence[Record], labels: Sequence[str]) -> str:
    """SHA-256 of the sorted ``image SHA-256<TAB>label`` lines: the identity of training data
    (the same images with the same labels give the same hash, wherever the files live)."""
    from dermfm.io import image_digest

    lines = sorted(
        f"{image_digest(r.image)}\t{label}" for r, label in zip(records, labels, strict=True)
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from dermfm.evaluate import calibration, metrics

    out = {
        "accuracy": metrics.accuracy(y, probs.argmax(axis=1)),
        "balanced_accuracy": metrics.balanced_accuracy(y, probs.argmax(axis=1)),
        "log_loss": calibration.negative_log_likelihood(y, probs),
        "ece": calibration.expected_calibration_error(y, probs),
    }
    if probs.shape[1] > 5:
        out["top5_accuracy"] = metrics.top_k_accuracy(y, probs, 5)
    with contextlib.suppress(ValueError):  # a single class present: no AUROC
        out["macro_auroc"] = metrics.macro_auroc(y, probs)
    return out


def fit_adapter(
    model: DermModel,
    train: Sequence[Record],
    val: Sequence[Record],
    labels: str | Path | Sequence[str] | LabelSet,
    test: Sequence[Record] = (),
    *,
    templates: str | Sequence[str] = "skin8",
    tta: bool = False,
    cache_shots: int = 16,
    max_per_class: int | None = None,
    seed: int = 0,
    fitted_on: str = "",
    batch_size: int = 64,
    stores: Sequence[str | Path] = (),
    show_progress: bool | None = None,
) -> Adapter:
    """Fit an :class:`Adapter` of ``model`` on labelled records (only those whose label is in
    the label set count), tune and calibrate it on ``val``, measure it against zero-shot on
    ``val`` and ``test``.

    Embeddings come from the content-keyed cache (:func:`~dermfm.evaluate.tasks.embed_records`),
    reading the embedding ``stores`` (``dermfm embed`` folders of ``model``) first.

    Args:
        labels: the label set (class labels are matched like ``dermfm eval`` does).
        tta: fit on test-time-augmented embeddings.
        max_per_class: use at most this many training images per class (a quick adapter).
        fitted_on: a sentence about the data for the provenance (datasets, splits).

    Raises:
        ValueError: fewer than two classes with training images, or no labelled validation
            image.
    """
    import dermfm
    from dermfm.evaluate.tasks import embed_records, targets
    from dermfm.knowledge import load_label_set
    from dermfm.progress import progress
    from dermfm.zeroshot import ZeroShotClassifier

    label_set = load_label_set(labels)
    clf = ZeroShotClassifier(model, label_set, templates)
    embedded = {}
    for name, records in (("train", train), ("val", val), ("test", test)):
        y = targets(records, label_set)
        labelled = [r for r, t in zip(records, y, strict=True) if t >= 0]
        if name == "train" and max_per_class and labelled:
            keep = subsample(y[y >= 0], shots=max_per_class, seed=seed)
            labelled = [labelled[i] for i in keep]
        if not labelled:
            continue
        split = embed_records(
            model, labelled, batch_size, tta=tta, stores=stores, show_progress=show_progress
        )
        embedded[name] = (split, targets(split.records, label_set))
    if "val" not in embedded:
        raise ValueError(f"no validation image carries a label of label set {label_set.name!r}")
    if "train" not in embedded or len(np.unique(embedded["train"][1])) < 2:
        raise ValueError(
            f"an adapter needs training images of at least two classes of {label_set.name!r}"
        )
    train_split, train_y = embedded["train"]
    val_split, val_y = embedded["val"]
    adapter = Adapter(cache_shots=cache_shots, seed=seed)
    with progress("Fitting the adapter (probe, cache, blend)", 2, show_progress) as advance:
        sims = clf.similarities(val_split.vectors)
        advance(1)
        adapter.fit(train_split.vectors, train_y, val_split.vectors, val_y, sims, model.logit_scale)
        advance(1)
    measured: dict[str, Any] = {}
    for name in ("val", "test"):
        if name not in embedded:
            continue
        part, y = embedded[name]
        sims = clf.similarities(part.vectors)
        zero_shot = (model.logit_scale * sims).softmax(dim=-1).numpy()
        adapted = adapter.predict_proba(part.vectors, sims).numpy()
        measured[name] = {
            "n": len(y),
            "zero_shot": _metrics(y, zero_shot),
            "adapter": _metrics(y, adapted),
        }
    class_labels = [c.label for c in label_set.classes]
    adapter.info = AdapterInfo(
        model=model.name,
        model_key=model.cache_key,
        embed_dim=model.embed_dim,
        label_set=label_set.name,
        classes=[{"label": c.label, "name": c.name, "node": c.node} for c in label_set.classes],
        templates=list(clf.templates),
        data_hash=data_hash(train_split.records, [class_labels[i] for i in train_y]),
        fitted_on=fitted_on or f"{len(train_y)} training images",
        n_train=len(train_y),
        n_val=len(val_y),
        tta=tta,
        metrics=measured,
        dermfm_version=dermfm.__version__,
    )
    adapter.fingerprint = model_fingerprint(model)
    return adapter


def metrics_rows(adapter: Adapter) -> list[tuple[str, str, int, dict[str, float]]]:
    """``(split, scores, n, metrics)`` rows of an adapter's stored measurements, zero-shot
    first, for tables."""
    rows = []
    for split, found in adapter._info().metrics.items():
        for kind in ("zero_shot", "adapter"):
            rows.append((split, kind.replace("_", "-"), int(found["n"]), found[kind]))
    return rows
