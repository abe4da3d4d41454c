"""Benchmark run files: which models, which datasets, which tasks (configs as data).

A run file is YAML (see ``docs/evaluation.md`` and the packaged example
``dermfm/evaluate/runs/shared_data.yaml``)::

    name: my-benchmark
    output: runs/my-benchmark          # relative to the run file
    models: [dermfm-bundled, ./my-finetuned-model]
    datasets:
      - {dataset: ham10000, root: ../shared/data, split: test, val_split: val,
         train_split: train}
    tasks: [zeroshot, calibration, fairness, concepts, retrieval, linear_probe, few_shot,
            leakage]
    options: {templates: skin8, n_boot: 1000, seed: 0}

Unknown keys, tasks or option names are errors naming the file and the field, so a typo never
silently changes what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dermfm.errors import SourceError
from dermfm.knowledge.files import read_document

#: Every task the harness runs, in the order it runs them.
TASKS = (
    "zeroshot",
    "calibration",
    "fairness",
    "concepts",
    "retrieval",
    "linear_probe",
    "few_shot",
    "leakage",
)
#: Metrics a fairness table can break down by subgroup (the malignant ones need a label set
#: with malignant classes).
FAIRNESS_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_auroc",
    "malignant_auroc",
    "malignant_sensitivity",
    "malignant_specificity",
)
#: Tasks run when a run file lists none.
DEFAULT_TASKS = ("zeroshot", "calibration", "fairness", "concepts")


class RunConfigError(SourceError):
    """A run file (or run options) that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of a run: a spec (packaged name or YAML path) read from ``root``.

    Attributes:
        dataset: dataset spec name (``ham10000``, ``pad_ufes_20``...) or path of a spec YAML.
        root: folder holding the data (spec-relative folders are resolved under it).
        split: the split that is evaluated.
        val_split: split used to fit the calibration temperature and choose probe
            regularisation (skipped when absent from the data).
        train_split: split used to train linear probes and as the leakage reference.
        label_set: override of the spec's label set (packaged name or YAML path).
        max_images: deterministic cap on the images of every split (a quick look, not a
            result).
        tasks: the tasks run on this dataset when they differ from the run's (e.g. no
            few-shot curves on a 377-class dataset).
    """

    dataset: str
    root: str = "."
    split: str = "test"
    val_split: str | None = "val"
    train_split: str | None = "train"
    label_set: str | None = None
    max_images: int | None = None
    tasks: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        """Short display name (the spec's file stem when given as a path)."""
        return Path(self.dataset).stem if self.dataset.endswith((".yaml", ".yml")) else self.dataset


@dataclass(frozen=True)
class RunOptions:
    """Settings shared by every model x dataset evaluation of a run."""

    templates: str = "skin8"
    apply_masks: bool = True
    top_k: tuple[int, ...] = (1, 3, 5)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 64
    calibration_bins: int = 15
    subgroups: tuple[str, ...] = ("skin_type", "sex", "age_band", "body_site", "modality")
    fairness_metrics: tuple[str, ...] = ("accuracy", "balanced_accuracy", "malignant_auroc")
    min_group_size: int = 20
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
    few_shot_seeds: tuple[int, ...] = (0, 1, 2)
    probe_class_weight: str | None = None
    max_hamming: int = 6
    min_cosine: float = 0.97
    exclude_duplicates: bool = False
    exclude_methods: tuple[str, ...] = ("exact", "phash")
    leakage_reference: str | None = None
    cache: bool = True
    #: adapter files (``dermfm adapt``; ``shipped``: the model's own); each dataset is scored
    #: with the one fitted for its label set, the others stay zero-shot
    adapters: tuple[str, ...] = ()
    #: test-time augmentation of every embedding (flips and 90-degree rotations, averaged)
    tta: bool = False
    #: embedding stores (``dermfm embed`` folders of the evaluated model) read before embedding
    stores: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """A whole benchmark run: models x datasets x tasks, and where results go."""

    name: str
    output: Path
    models: tuple[str, ...]
    datasets: tuple[DatasetRef, ...]
    tasks: tuple[str, ...] = DEFAULT_TASKS
    options: RunOptions = field(default_factory=RunOptions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the results so a run documents itself)."""
        return {
            "name": self.name,
            "output": str(self.output),
            "models": list(self.models),
            "datasets": [
                {k: list(v) if isinstance(v, tuple) else v for k, v in vars(d).items()}
                for d in self.datasets
            ],
            "tasks": list(self.tasks),
            "options": {
                f.name: list(v) if isinstance(v := getattr(self.options, f.name), tuple) else v
                for f in fields(RunOptions)
            },
        }


def _checked_keys(entry: dict[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise RunConfigError(
            source, f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}"
        )


def _coerce(value: Any, default: Any, source: str, where: str) -> Any:
    """``value`` converted to the type of ``default`` (tuples from lists), or an error."""
    try:
        if isinstance(default, tuple):
            items = value if isinstance(value, list | tuple) else [value]
            kind = type(default[0]) if default else str
            return tuple(kind(v) for v in items)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if default is None or value is None:
            return value
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise RunConfigError(source, f"{where}: {value!r} is not valid ({exc})") from exc


def parse_options(raw: dict[str, Any] | None, source: str = "options") -> RunOptions:
    """:class:`RunOptions` from a mapping, every key checked against the known options."""
    raw = dict(raw or {})
    names = {f.name: f for f in fields(RunOptions)}
    _checked_keys(raw, set(names), source, "options")
    defaults = RunOptions()
    values = {
        key: _coerce(value, getattr(defaults, key), source, f"options.{key}")
        for key, value in raw.items()
    }
    options = replace(defaults, **values)
    if options.n_boot < 0:
        raise RunConfigError(source, "options.n_boot must be >= 0")
    unknown = sorted(set(options.fairness_metrics) - set(FAIRNESS_METRICS))
    if unknown:
        raise RunConfigError(
            source, f"options.fairness_metrics: unknown {unknown}; known: {list(FAIRNESS_METRICS)}"
        )
    return options


def parse_tasks(raw: Any, source: str = "tasks") -> tuple[str, ...]:
    """Task names checked against :data:`TASKS`, in the harness's order."""
    items = [raw] if isinstance(raw, str) else list(raw or DEFAULT_TASKS)
    unknown = sorted(set(items) - set(TASKS))
    if unknown:
        raise RunConfigError(source, f"unknown task(s) {unknown}; known: {list(TASKS)}")
    return tuple(t for t in TASKS if t in items)


def _dataset(entry: Any, base: Path, source: str, index: int) -> DatasetRef:
    where = f"datasets[{index}]"
    if isinstance(entry, str):
        entry = {"dataset": entry}
    if not isinstance(entry, dict) or "dataset" not in entry:
        raise RunConfigError(source, f"{where}: expected a name or a mapping with 'dataset'")
    _checked_keys(entry, {f.name for f in fields(DatasetRef)}, source, where)
    values = dict(entry)
    values["root"] = str((base / str(values.get("root", "."))).resolve())
    spec = str(values["dataset"])
    if spec.endswith((".yaml", ".yml")):
        values["dataset"] = str((base / spec).resolve())
    if values.get("max_images") is not None and int(values["max_images"]) < 1:
        raise RunConfigError(source, f"{where}.max_images must be >= 1")
    if values.get("tasks") is not None:
        values["tasks"] = parse_tasks(values["tasks"], source)
    return DatasetRef(**values)


def run_config_from_dict(raw: dict[str, Any], base: Path, source: str) -> RunConfig:
    """Build a :class:`RunConfig` from a parsed run file; relative paths resolve against
    ``base`` (the run file's folder)."""
    _checked_keys(
        raw,
        {"schema_version", "name", "output", "models", "datasets", "tasks", "options"},
        source,
        "top level",
    )
    models = raw.get("models")
    if isinstance(models, str):
        models = [models]
    if not models or not all(isinstance(m, str) for m in models):
        raise RunConfigError(source, "models: expected a non-empty list of model names or paths")
    datasets = raw.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise RunConfigError(source, "datasets: expected a non-empty list")
    name = str(raw.get("name") or Path(source).stem)
    return RunConfig(
        name=name,
        output=(base / str(raw.get("output") or f"runs/{name}")).resolve(),
        models=tuple(models),
        datasets=tuple(_dataset(d, base, source, i) for i, d in enumerate(datasets)),
        tasks=parse_tasks(raw.get("tasks"), source),
        options=parse_options(raw.get("options"), source),
    )


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run file (YAML or JSON)."""
    file = Path(path)
    if not file.is_file():
        raise RunConfigError(file, "run file not found")
    raw = read_document(file)
    if not isinstance(raw, dict):
        raise RunConfigError(file, "expected a mapping at the top level")
    return run_config_from_dict(raw, file.resolve().parent, str(file))
