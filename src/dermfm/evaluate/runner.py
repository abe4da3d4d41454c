"""Benchmark runs: every model x dataset x task of a :class:`~dermfm.evaluate.config.RunConfig`.

Each split is embedded once per model (through the content-keyed embedding cache of
:func:`~dermfm.evaluate.tasks.embed_records`), then every task scores the same vectors:

* ``zeroshot``: accuracy, balanced accuracy, macro / weighted F1, macro and per-class
  one-vs-rest AUROC, top-k; malignant-vs-benign derived through the ontology;
* ``calibration``: temperature fitted on the validation split, ECE / NLL / Brier before and
  after, reliability diagrams;
* ``fairness``: the metrics per subgroup with the gap to the best group;
* ``concepts``: per-concept AUROC of the MONET scores (e.g. the Derm7pt criteria);
* ``retrieval``: image->text and text->image recall@k and median rank;
* ``linear_probe`` / ``few_shot``: logistic regression on the train split (regularisation
  chosen on the validation split), k-shot and per-class fractions;
* ``leakage``: near-duplicates between the evaluated split and the training reference,
  optionally excluded before anything else is measured.

Results go to ``results.json`` plus a Markdown / HTML report with plots and a per-image
predictions CSV (:mod:`dermfm.evaluate.report`). Models evaluated on the same images are
compared with a paired bootstrap test.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermfm.data import Record
from dermfm.evaluate import calibration, fairness, metrics, plots, probe, retrieval
from dermfm.evaluate import leakage as leakage_audit
from dermfm.evaluate.config import DatasetRef, RunConfig, RunOptions
from dermfm.evaluate.tasks import (
    EmbeddedSplit,
    concept_aurocs,
    diagnosis_report,
    embed_records,
    malignancy_truth,
    malignant_columns,
    targets,
)
from dermfm.knowledge import LabelSet, load_label_set
from dermfm.models.base import DermModel
from dermfm.results import ADAPTER_SCORE_KIND
from dermfm.zeroshot import ZeroShotClassifier

if TYPE_CHECKING:
    from dermfm.adapters import Adapter

#: Largest label set whose per-class AUROCs (with intervals) and ROC curves are reported.
PER_CLASS_LIMIT = 30


@dataclass
class DatasetData:
    """A dataset read once for a run: its label set and records per split."""

    ref: DatasetRef
    label_set: LabelSet
    splits: dict[str, list[Record]]
    reader: dict[str, Any]


@dataclass
class Scored:
    """Zero-shot outputs of one model on one dataset, kept for paired model comparisons.

    ``probs`` are the raw softmax scores every metric is computed on (as the published protocols
    do; a temperature changes AUROCs across images); ``calibrated`` the temperature-scaled
    probabilities shown in the predictions file, when a calibration was fitted.
    """

    images: list[str]
    groups: list[str]
    y: np.ndarray
    probs: np.ndarray
    malignant_truth: np.ndarray
    malignant_score: np.ndarray | None
    malignant_decision: np.ndarray
    calibrated: np.ndarray | None = None


def _cap(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    if limit is None or len(records) <= limit:
        return records
    picked = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in picked]


def load_dataset(ref: DatasetRef, seed: int = 0, apply_masks: bool = True) -> DatasetData:
    """Read a dataset spec's records, grouped by split, with its label set.

    ``apply_masks=False`` drops the specs' ``mask_box`` (e.g. the DermNet watermark blank), as
    the published evaluation protocols do.
    """
    from dermfm.data import read_dataset

    read = read_dataset(ref.dataset, ref.root)
    label_set = load_label_set(ref.label_set) if ref.label_set else read.label_set
    splits = {
        name: [r if apply_masks else dataclasses.replace(r, mask_box=None) for r in records]
        for name, records in read.splits.items()
    }
    if ref.split not in splits:
        raise ValueError(
            f"{ref.dataset}: no record in split {ref.split!r} under {ref.root}; "
            f"splits found: {sorted(splits) or 'none'}"
        )
    splits = {name: _cap(records, ref.max_images, seed) for name, records in splits.items()}
    return DatasetData(ref, label_set, splits, read.report.to_dict())


def _known(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = truth >= 0
    return truth[keep], score[keep]


def malignant_auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """AUROC of malignant vs benign over the rows whose truth is known (truth >= 0)."""
    return metrics.auroc(*_known(truth, score))


def sensitivity(truth: np.ndarray, decision: np.ndarray) -> float:
    """Share of known-malignant rows decided malignant (rows with truth -1 ignored)."""
    t, d = _known(truth, decision)
    if not (t == 1).any():
        raise ValueError("no malignant case")
    return float(d[t == 1].mean())


def specificity(truth: np.ndarray, decision: np.ndarray) -> float:
    """Share of known-benign rows decided not malignant (rows with truth -1 ignored)."""
    t, d = _known(truth, decision)
    if not (t == 0).any():
        raise ValueError("no benign case")
    return float(1.0 - d[t == 0].mean())


def _estimates(values: dict[str, metrics.Estimate]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in values.items()}


@dataclass
class DatasetEvaluation:
    """One model on one dataset: embeds each split it needs once, then runs the tasks."""

    model: DermModel
    model_name: str
    data: DatasetData
    tasks: tuple[str, ...]
    options: RunOptions
    out_dir: Path
    show_progress: bool | None = None
    files: dict[str, str] = field(default_factory=dict)
    _embedded: dict[str, EmbeddedSplit] = field(default_factory=dict)

    # ------------------------------------------------------------------ shared state
    @property
    def slug(self) -> str:
        """File-name stem of this model x dataset."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model_name)
        return f"{safe.strip('_')}__{self.data.ref.label}"

    def embedded(self, split: str) -> EmbeddedSplit:
        """The split's embeddings (labelled records only), computed once."""
        if split not in self._embedded:
            records = self.data.splits.get(split, [])
            labelled = [
                r
                for r, t in zip(records, targets(records, self.data.label_set), strict=True)
                if t >= 0
            ]
            self._embedded[split] = embed_records(
                self.model,
                labelled,
                self.options.batch_size,
                cache=self.options.cache,
                tta=self.options.tta,
                stores=self.options.stores,
                show_progress=self.show_progress,
            )
        return self._embedded[split]

    @cached_property
    def adapter(self) -> Adapter | None:
        """The run's adapter for this dataset's label set (``options.adapters``), if any."""
        from dermfm.adapters import select_adapter

        return select_adapter(self.options.adapters, self.model, self.data.label_set)

    def has_split(self, split: str | None) -> bool:
        """Whether the dataset has records in ``split``."""
        return bool(split) and bool(self.data.splits.get(split or ""))

    def _plot(self, name: str) -> Path:
        path = self.out_dir / "plots" / f"{self.slug}__{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files[name] = str(path.relative_to(self.out_dir))
        return path

    def _classifier(self) -> ZeroShotClassifier:
        return ZeroShotClassifier(
            self.model,
            labels=self.data.label_set,
            templates=self.options.templates,
            adapter=self.adapter,
        )

    # ------------------------------------------------------------------ run
    def run(self) -> tuple[dict[str, Any], Scored | None]:
        """All configured tasks; returns the results section and the zero-shot outputs."""
        ref = self.data.ref
        result: dict[str, Any] = {
            "model": self.model_name,
            "model_card": self.model.card.to_dict(),
            "dataset": ref.label,
            "split": ref.split,
            "label_set": self.data.label_set.name,
            "reader": self.data.reader,
            "adapter": self.adapter.to_dict() if self.adapter else None,
            "tta": self.options.tta,
        }
        if "leakage" in self.tasks:
            result["leakage"] = self._leakage()
        test = self.embedded(ref.split)
        result["n_images"] = len(test.records)
        result["failed_images"] = [str(e) for e in test.failed]
        if not test.records:
            result["error"] = "no image of the evaluated split could be embedded"
            return result, None
        logits = self._classifier().logits(test.vectors).numpy()
        y = targets(test.records, self.data.label_set)
        scored = self._scored(test, y, calibration.softmax(logits))
        if "calibration" in self.tasks:
            result["calibration"] = self._calibration(logits, y)
            if "scaler" in result["calibration"]:
                scaler = calibration.TemperatureScaler.from_dict(result["calibration"]["scaler"])
                scored.calibrated = scaler.predict_proba(logits)
        result["score_kind"] = "metrics on raw zero-shot scores; predictions file: " + (
            "calibrated probabilities (temperature fitted on the validation split)"
            if scored.calibrated is not None
            else "raw softmax scores (uncalibrated)"
        )
        if self.adapter is not None:
            result["score_kind"] = (
                f"metrics and predictions file on {ADAPTER_SCORE_KIND} probabilities "
                f"(adapter {self.adapter.describe()})"
            )
        if "zeroshot" in self.tasks:
            result["zeroshot"] = self._zeroshot(test, scored)
            self._write_predictions(test.records, scored)
        if "fairness" in self.tasks:
            result["fairness"] = self._fairness(test.records, scored)
        if "concepts" in self.tasks:
            result["concepts"] = self._concepts(test)
        if "retrieval" in self.tasks:
            result["retrieval"] = self._retrieval(test)
        if "linear_probe" in self.tasks or "few_shot" in self.tasks:
            result.update(self._probes(test, y))
        result["files"] = dict(self.files)
        return result, scored

    def _scored(self, test: EmbeddedSplit, y: np.ndarray, probs: np.ndarray) -> Scored:
        columns = malignant_columns(self.data.label_set)
        truth = malignancy_truth(test.records)
        return Scored(
            images=[r.image for r in test.records],
            groups=[r.key for r in test.records],
            y=y,
            probs=probs,
            malignant_truth=truth,
            malignant_score=probs[:, columns].sum(axis=1) if columns else None,
            malignant_decision=np.isin(probs.argmax(axis=1), columns).astype(np.int64),
        )

    # ------------------------------------------------------------------ tasks
    def _zeroshot(self, test: EmbeddedSplit, s: Scored) -> dict[str, Any]:
        opts, names = self.options, self.data.label_set.names
        report = diagnosis_report(
            self.model,
            test,
            self.data.label_set,
            templates=opts.templates,
            n_boot=opts.n_boot,
            seed=opts.seed,
            top_k=opts.top_k,
            per_class_auroc=len(names) <= PER_CLASS_LIMIT,
            adapter=self.adapter,
        )
        out: dict[str, Any] = {
            "metrics": _estimates({k: v for k, v in report.items() if not k.startswith("auroc[")}),
            "per_class_auroc": {
                k[6:-1]: v.to_dict() for k, v in report.items() if k.startswith("auroc[")
            },
            "support": {n: int((s.y == i).sum()) for i, n in enumerate(names)},
        }
        pred = s.probs.argmax(axis=1)
        matrix = plots.confusion_matrix(s.y, pred, len(names))
        out["confusion_matrix"] = matrix.tolist()
        title = f"{self.model_name} on {self.data.ref.label}"
        plots.plot_confusion(matrix, names, self._plot("confusion"), title)
        curves = {
            n: (s.y == i, s.probs[:, i]) for i, n in enumerate(names) if len(names) <= 12
        }  # legible
        if s.malignant_score is not None:
            out["malignancy"] = self._malignancy(s)
            if "auroc" in out["malignancy"]["metrics"]:
                curves = {
                    "malignant vs benign": _known(s.malignant_truth, s.malignant_score),
                    **curves,
                }
        if curves:
            plots.plot_roc(curves, self._plot("roc"), title)
        return out

    def _malignancy(self, s: Scored) -> dict[str, Any]:
        assert s.malignant_score is not None
        decision = s.malignant_decision
        known = int((s.malignant_truth >= 0).sum())
        out: dict[str, Any] = {
            "definition": "score = summed probability of the label set's malignant classes "
            "(ontology); decision = arg-max class is malignant; premalignant, uncertain and "
            "mixed conditions are left out",
            "n": known,
            "n_malignant": int((s.malignant_truth == 1).sum()),
            "metrics": {},
        }
        opts = self.options
        for name, fn, arrays in (
            ("auroc", malignant_auroc, (s.malignant_truth, s.malignant_score)),
            ("sensitivity", sensitivity, (s.malignant_truth, decision)),
            ("specificity", specificity, (s.malignant_truth, decision)),
        ):
            try:
                est = metrics.bootstrap(
                    fn, *arrays, n_boot=opts.n_boot, seed=opts.seed, groups=s.groups, name=name
                )
            except ValueError:
                continue
            out["metrics"][name] = est.to_dict()
        return out

    def _calibration(self, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        opts, ref = self.options, self.data.ref
        groups = [r.key for r in self.embedded(ref.split).records]
        raw = calibration.softmax(logits)

        def ece(t: np.ndarray, p: np.ndarray) -> float:
            return calibration.expected_calibration_error(t, p, n_bins=opts.calibration_bins)

        def summary(p: np.ndarray) -> dict[str, Any]:
            return {
                name: metrics.bootstrap(
                    fn, y, p, n_boot=opts.n_boot, seed=opts.seed, groups=groups, name=name
                ).to_dict()
                for name, fn in (
                    ("ece", ece),
                    ("nll", calibration.negative_log_likelihood),
                    ("brier", calibration.brier_score),
                )
            }

        out: dict[str, Any] = {"n_bins": opts.calibration_bins, "raw": summary(raw)}
        if self.adapter is not None:
            out["scores"] = (
                f"'raw' holds the adapter's {ADAPTER_SCORE_KIND} probabilities; 'calibrated' "
                "adds a second temperature fitted on the validation split"
            )
        curves = {"raw": calibration.reliability_curve(y, raw, n_bins=opts.calibration_bins)}
        if self.has_split(ref.val_split) and ref.val_split != ref.split:
            val = self.embedded(ref.val_split or "")
            val_y = targets(val.records, self.data.label_set)
            scaler = calibration.TemperatureScaler().fit(
                self._classifier().logits(val.vectors).numpy(), val_y
            )
            calibrated = scaler.predict_proba(logits)
            out.update(
                temperature=float(scaler.temperature_),
                fitted_on=f"{ref.val_split} split ({len(val.records)} images)",
                scaler=scaler.to_dict(),
                calibrated=summary(calibrated),
            )
            curves["calibrated"] = calibration.reliability_curve(
                y, calibrated, n_bins=opts.calibration_bins
            )
        else:
            out["note"] = "no validation split: the scores stay raw (uncalibrated)"
        calibration.plot_reliability(curves, self._plot("reliability"))
        return out

    def _fairness(self, records: list[Record], s: Scored) -> dict[str, Any]:
        opts = self.options
        pred = s.probs.argmax(axis=1)
        decision = s.malignant_decision
        score = s.malignant_score if s.malignant_score is not None else np.zeros(len(pred))
        # every metric sees the rows (y, pred, probs, malignant truth, score, decision)
        available: dict[str, Callable[..., float]] = {
            "accuracy": lambda t, p, *_: metrics.accuracy(t, p),
            "balanced_accuracy": lambda t, p, *_: metrics.balanced_accuracy(t, p),
            "macro_f1": lambda t, p, *_: metrics.macro_f1(t, p),
            "weighted_f1": lambda t, p, *_: metrics.weighted_f1(t, p),
            "macro_auroc": lambda t, _p, sc, *_: metrics.macro_auroc(t, sc),
        }
        if s.malignant_score is not None:
            available |= {
                "malignant_auroc": lambda _t, _p, _s, mt, ms, _d: malignant_auroc(mt, ms),
                "malignant_sensitivity": lambda _t, _p, _s, mt, _ms, d: sensitivity(mt, d),
                "malignant_specificity": lambda _t, _p, _s, mt, _ms, d: specificity(mt, d),
            }
        chosen = {k: available[k] for k in opts.fairness_metrics if k in available}
        out: dict[str, Any] = {}
        for key in opts.subgroups:
            values = fairness.subgroup_values(records, key)
            if not chosen or len({v for v in values if v is not None}) < 2:
                continue
            table = fairness.subgroup_table(
                chosen,
                s.y,
                pred,
                s.probs,
                s.malignant_truth,
                score,
                decision,
                subgroups=values,
                key=key,
                groups=s.groups,
                n_boot=opts.n_boot,
                seed=opts.seed,
                min_size=opts.min_group_size,
            )
            out[key] = table.to_dict()
            first = next(iter(chosen))
            table.plot_bars(self._plot(f"fairness_{key}"), first)
        return out

    def _concepts(self, test: EmbeddedSplit) -> dict[str, Any]:
        if not any(r.concepts for r in test.records):
            return {"note": "the dataset has no concept labels"}
        opts = self.options
        found = concept_aurocs(self.model, test, n_boot=opts.n_boot, seed=opts.seed)
        values = [e.value for e in found.values()]
        return {
            "per_concept_auroc": _estimates(found),
            "mean_auroc": float(np.mean(values)) if values else None,
            "n_above_0_7": int(sum(v > 0.7 for v in values)),
            "n_concepts": len(values),
        }

    def _retrieval(self, test: EmbeddedSplit) -> dict[str, Any]:
        from dermfm.data import CaptionSynthesizer

        synth = CaptionSynthesizer(views=("ontology",))
        texts = [
            list(r.texts) or [t for t in synth(r, random.Random(self.options.seed)) if t]
            for r in test.records
        ]
        unique, image_to_texts = retrieval.pairs_from_texts(texts)
        text_emb = self.model.encode_texts(unique)
        opts = self.options
        found = retrieval.retrieval_metrics(
            test.vectors, text_emb, image_to_texts, n_boot=opts.n_boot, seed=opts.seed
        )
        return {
            "captions": "the records' own captions"
            if any(r.texts for r in test.records)
            else "synthesised from the label (ontology view): a retrieved image or caption "
            "of the same diagnosis counts as correct",
            "n_images": len(test.records),
            "n_texts": len(unique),
            "metrics": _estimates(found),
        }

    def _probes(self, test: EmbeddedSplit, y: np.ndarray) -> dict[str, Any]:
        ref, opts = self.data.ref, self.options
        if not self.has_split(ref.train_split) or ref.train_split == ref.split:
            return {"linear_probe": {"note": f"no training split {ref.train_split!r}"}}
        train = self.embedded(ref.train_split or "")
        train_y = targets(train.records, self.data.label_set)
        val_x = val_y = None
        if self.has_split(ref.val_split) and ref.val_split not in (ref.split, ref.train_split):
            val = self.embedded(ref.val_split or "")
            val_x, val_y = val.vectors.numpy(), targets(val.records, self.data.label_set)
        groups = [r.key for r in test.records]
        out: dict[str, Any] = {}
        names = self.data.label_set.names
        if "linear_probe" in self.tasks:
            fitted = probe.LinearProbe(seed=opts.seed, class_weight=opts.probe_class_weight).fit(
                train.vectors.numpy(), train_y, val_x, val_y
            )
            report = metrics.classification_report(
                y,
                fitted.predict_proba_full(test.vectors.numpy(), len(names)),
                names,
                groups=groups,
                n_boot=opts.n_boot,
                seed=opts.seed,
                top_k=opts.top_k,
            )
            out["linear_probe"] = {
                "C": fitted.C_,
                "n_train": len(train.records),
                "selected_on": "validation split" if val_x is not None else "hold-out of train",
                "class_weight": opts.probe_class_weight or "none (every example weighs the same)",
                "metrics": _estimates(report),
            }
        if "few_shot" in self.tasks:
            results = probe.few_shot_curve(
                train.vectors.numpy(),
                train_y,
                val_x,
                val_y,
                test.vectors.numpy(),
                y,
                names,
                shots=opts.shots,
                fractions=opts.fractions,
                seeds=opts.few_shot_seeds,
                groups=groups,
                n_boot=opts.n_boot,
                class_weight=opts.probe_class_weight,
            )
            out["few_shot"] = [r.to_dict() for r in results]
            probe.plot_few_shot(results, self._plot("few_shot"))
        return out

    def _leakage(self) -> dict[str, Any]:
        ref, opts = self.data.ref, self.options
        if opts.leakage_reference:
            from dermfm.data import read_manifest

            reference = read_manifest(opts.leakage_reference)
            where = opts.leakage_reference
        elif self.has_split(ref.train_split) and ref.train_split != ref.split:
            reference = self.data.splits[ref.train_split or ""]
            where = f"{ref.label} {ref.train_split} split"
        else:
            return {"note": "no training reference to audit against"}
        evaluated = self.data.splits[ref.split]
        ev, tr = (
            embed_records(
                self.model,
                part,
                opts.batch_size,
                cache=opts.cache,
                tta=opts.tta,
                stores=opts.stores,
                show_progress=self.show_progress,
            )
            for part in (evaluated, reference)
        )
        report = leakage_audit.audit_leakage(
            ev.records,
            tr.records,
            eval_embeddings=ev.vectors,
            train_embeddings=tr.vectors,
            max_hamming=opts.max_hamming,
            min_cosine=opts.min_cosine,
        )
        csv_path = self.out_dir / "leakage" / f"{self.slug}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        report.to_csv(csv_path)
        self.files["leakage_pairs"] = str(csv_path.relative_to(self.out_dir))
        out = {"reference": where, **report.to_dict()}
        if opts.exclude_duplicates:
            kept = report.exclude(evaluated, methods=opts.exclude_methods)
            out["excluded_by"] = list(opts.exclude_methods)
            out["excluded"] = len(evaluated) - len(kept)
            self.data.splits[ref.split] = kept
            self._embedded.pop(ref.split, None)
        return out

    def _write_predictions(self, records: list[Record], s: Scored) -> None:
        """One row per image; probabilities are calibrated when a calibration was fitted
        (``score_kind`` says which), ranks and classes are the same either way."""
        names = self.data.label_set.names
        shown = s.calibrated if s.calibrated is not None and self.adapter is None else s.probs
        kind = (
            ADAPTER_SCORE_KIND
            if self.adapter is not None
            else "calibrated"
            if s.calibrated is not None
            else "raw"
        )
        columns = malignant_columns(self.data.label_set)
        path = self.out_dir / "predictions" / f"{self.slug}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        k = min(5, len(names))
        keys = [key for key in self.options.subgroups if key != "age_band"] + ["age"]
        order = np.argsort(-shown, axis=1)[:, :k]
        header = ["image", "group", "true_class", "predicted_class", "probability", "correct"]
        header += [f"top{j + 1}" for j in range(k)]
        header += [f"top{j + 1}_probability" for j in range(k)]
        header += ["malignant_truth", "malignant_probability", *keys, "score_kind"]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for i, r in enumerate(records):
                top = order[i]
                truth = {1: "malignant", 0: "benign", -1: ""}[int(s.malignant_truth[i])]
                malignant = f"{shown[i, columns].sum():.6f}" if columns else ""
                writer.writerow(
                    [r.image, r.key, names[s.y[i]], names[top[0]], f"{shown[i, top[0]]:.6f}"]
                    + [int(s.y[i] == top[0]), *(names[j] for j in top)]
                    + [f"{shown[i, j]:.6f}" for j in top]
                    + [truth, malignant, *(r.metadata.get(key, "") for key in keys), kind]
                )
        self.files["predictions"] = str(path.relative_to(self.out_dir))


def compare(
    a: Scored, b: Scored, names: tuple[str, str], options: RunOptions
) -> dict[str, Any] | None:
    """Paired bootstrap of two models on the images both scored (same resamples)."""
    index_b = {image: i for i, image in enumerate(b.images)}
    rows = [(i, index_b[img]) for i, img in enumerate(a.images) if img in index_b]
    if len(rows) < 2:
        return None
    ia, ib = (np.asarray(x) for x in zip(*rows, strict=True))
    y, groups = a.y[ia], [a.groups[i] for i in ia]
    pa, pb = a.probs[ia], b.probs[ib]
    found = {}
    for name, fn in (
        ("accuracy", lambda t, p: metrics.accuracy(t, p.argmax(axis=1))),
        ("balanced_accuracy", lambda t, p: metrics.balanced_accuracy(t, p.argmax(axis=1))),
        ("macro_auroc", metrics.macro_auroc),
    ):
        try:
            found[name] = metrics.paired_bootstrap(
                fn, y, pa, pb, groups=groups, n_boot=options.n_boot, seed=options.seed, name=name
            ).to_dict()
        except ValueError:
            continue
    return {"model_a": names[0], "model_b": names[1], "n_images": len(rows), "metrics": found}


def run_benchmark(
    config: RunConfig,
    *,
    show_progress: bool | None = None,
    load: Callable[[str], DermModel] | None = None,
) -> dict[str, Any]:
    """Run every model x dataset x task of ``config``; write results and the report.

    Returns the results (also written to ``<output>/results.json`` with ``report.md``,
    ``report.html``, ``plots/`` and ``predictions/``). A dataset or model that fails is
    reported in ``errors`` and the run goes on with the others.
    """
    from dermfm.evaluate.report import write_report
    from dermfm.models import load_model

    load = load or load_model
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": config.to_dict(),
        "runs": [],
        "comparisons": [],
        "errors": [],
    }
    data: list[DatasetData] = []
    for ref in config.datasets:
        try:
            data.append(load_dataset(ref, config.options.seed, config.options.apply_masks))
        except Exception as exc:
            results["errors"].append({"dataset": ref.label, "error": str(exc)})
    scored: dict[tuple[str, str], Scored] = {}
    for model_name in config.models:
        try:
            model = load(model_name)
        except Exception as exc:
            results["errors"].append({"model": model_name, "error": str(exc)})
            continue
        for dataset in data:
            evaluation = DatasetEvaluation(
                model,
                model_name,
                dataset,
                dataset.ref.tasks or config.tasks,
                config.options,
                out,
                show_progress,
            )
            try:
                section, outputs = evaluation.run()
            except Exception as exc:
                results["errors"].append(
                    {"model": model_name, "dataset": dataset.ref.label, "error": repr(exc)}
                )
                continue
            results["runs"].append(section)
            if outputs is not None:
                scored[(model_name, dataset.ref.label)] = outputs
    for dataset in data:
        present = [m for m in config.models if (m, dataset.ref.label) in scored]
        for ma, mb in itertools.combinations(present, 2):
            found = compare(
                scored[(ma, dataset.ref.label)],
                scored[(mb, dataset.ref.label)],
                (ma, mb),
                config.options,
            )
            if found:
                results["comparisons"].append({"dataset": dataset.ref.label, **found})
    write_report(results, out)
    return results


__all__ = [
    "DatasetData",
    "DatasetEvaluation",
    "Scored",
    "compare",
    "load_dataset",
    "run_benchmark",
]
