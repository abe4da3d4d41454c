"""dermfm.evaluate.probe: the linear probe against a manual scikit-learn loop, per-class subsets,
few-shot curves (determinism, bookkeeping, rendering), and a probe on real HAM10000 features."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from dermfm.evaluate.probe import (
    DEFAULT_CS,
    LinearProbe,
    few_shot_curve,
    few_shot_table,
    plot_few_shot,
    subsample,
    summarize_few_shot,
)

CS = (0.1, 1.0, 10.0, 100.0)


def _blobs(
    rng: np.random.Generator, n: int, n_classes: int, d: int = 16, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points around one random direction per class (fixed by the rng's first
    draws, so every call with a fresh rng of one seed shares the class centres)."""
    centres = np.random.default_rng(1234).normal(size=(n_classes, d))
    y = rng.integers(0, n_classes, size=n)
    x = centres[y] + spread * rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def _manual_choice(x, y, vx, vy, cs):
    """The documented protocol, written with scikit-learn alone."""
    scores = {}
    models = {}
    for c in sorted(cs):
        models[c] = LogisticRegression(C=c, max_iter=1000).fit(x, y)
        scores[c] = balanced_accuracy_score(vy, models[c].predict(vx))
    best = max(scores.values())
    chosen = min(c for c, s in scores.items() if s == best)
    return chosen, scores, models[chosen]


def test_separable_embeddings_are_learned() -> None:
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 300, 4, spread=0.3)
    tx, ty = _blobs(rng, 200, 4, spread=0.3)
    probe = LinearProbe(Cs=CS).fit(x[:200], y[:200], x[200:], y[200:])
    assert accuracy_score(ty, probe.predict(tx)) > 0.95
    proba = probe.predict_proba(torch.from_numpy(tx).float())
    assert proba.shape == (200, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(probe.classes_) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_is_the_validation_best_of_a_manual_sklearn_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = _blobs(rng, 160, 3, spread=1.5)
    vx, vy = _blobs(rng, 120, 3, spread=1.5)
    tx, _ = _blobs(rng, 50, 3, spread=1.5)
    probe = LinearProbe(Cs=CS, seed=seed).fit(x, y, vx, vy)
    chosen, scores, model = _manual_choice(x, y, vx, vy, CS)
    assert chosen == probe.C_
    assert probe.val_scores_ == pytest.approx(scores)
    # with a validation split the kept model is trained on train only (no refit with val)
    np.testing.assert_allclose(probe.predict_proba(tx), model.predict_proba(tx), atol=1e-8)


def test_balanced_class_weight_matches_sklearn_and_helps_rare_classes() -> None:
    rng = np.random.default_rng(3)
    x, y = _blobs(rng, 3000, 3, spread=1.2)
    keep = (y == 0) | (rng.random(len(y)) < 0.08)  # class 0 dominates, as nevus in HAM10000
    x, y = x[keep], y[keep]
    tx, ty = _blobs(np.random.default_rng(4), 900, 3, spread=1.2)
    plain = LinearProbe(Cs=(1.0,)).fit(x, y)
    weighted = LinearProbe(Cs=(1.0,), class_weight="balanced").fit(x, y)
    reference = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(x, y)
    np.testing.assert_allclose(weighted.predict_proba(tx), reference.predict_proba(tx), atol=1e-6)
    assert balanced_accuracy_score(ty, weighted.predict(tx)) > balanced_accuracy_score(
        ty, plain.predict(tx)
    )
    with pytest.raises(ValueError, match="class_weight"):
        LinearProbe(class_weight="inverse")


def test_without_validation_c_is_chosen_on_a_holdout_then_refit_on_all() -> None:
    rng = np.random.default_rng(4)
    x, y = _blobs(rng, 150, 3, spread=1.2)
    tx, _ = _blobs(rng, 40, 3, spread=1.2)
    probe = LinearProbe(Cs=CS).fit(x, y)
    assert set(probe.val_scores_) == set(CS)
    refit = LogisticRegression(C=probe.C_, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(probe.predict_proba(tx), refit.predict_proba(tx), atol=1e-8)
    # one C, no validation: nothing held out, nothing scored
    single = LinearProbe(Cs=(10.0,)).fit(x, y)
    assert single.C_ == 10.0 and single.val_scores_ == {}
    np.testing.assert_allclose(
        single.predict_proba(tx),
        LogisticRegression(C=10.0, max_iter=1000).fit(x, y).predict_proba(tx),
        atol=1e-8,
    )


def test_string_labels_and_full_probabilities() -> None:
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 90, 3, spread=0.3)
    names = np.array(["bcc", "mel", "nv"])
    probe = LinearProbe(Cs=CS).fit(x[:60], names[y[:60]], x[60:], names[y[60:]])
    assert list(probe.classes_) == ["bcc", "mel", "nv"]
    assert set(probe.predict(x[60:])) <= set(names)
    # class indices 0 and 2 of 4: columns 1 and 3 get probability 0
    keep = y != 1
    by_index = LinearProbe(Cs=(10.0,)).fit(x[keep], np.where(y[keep] == 2, 3, 0))
    full = by_index.predict_proba_full(x[:5], 4)
    np.testing.assert_allclose(full[:, [0, 3]], by_index.predict_proba(x[:5]))
    assert np.all(full[:, [1, 2]] == 0)
    with pytest.raises(ValueError, match="class indices"):
        probe.predict_proba_full(x[:5], 3)


def test_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 40, 2)
    with pytest.raises(ValueError, match="1 class"):
        LinearProbe().fit(x, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match="39 labels for 40"):
        LinearProbe().fit(x, y[:39])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LinearProbe().fit(bad, y)
    with pytest.raises(ValueError, match="both val_x and val_y"):
        LinearProbe().fit(x, y, val_x=x)
    with pytest.raises(ValueError, match="features"):
        LinearProbe().fit(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().predict(x)
    with pytest.raises(ValueError, match="too few"):
        LinearProbe().fit(x[:2], [0, 1])
    with pytest.raises(ValueError, match="positive"):
        LinearProbe(Cs=(0.0, 1.0))
    fitted = LinearProbe(Cs=(1.0,)).fit(x, y)
    with pytest.raises(ValueError, match="16"):
        fitted.predict(x[:, :8])


def test_subsample_k_shot_and_fractions() -> None:
    y = np.array([0] * 30 + [1] * 7 + [2] * 2 + [3] * 1)
    for k in (1, 4, 8):
        idx = subsample(y, shots=k, seed=3)
        counts = np.bincount(y[idx], minlength=4)
        expected = np.minimum(np.bincount(y), k)  # a class with fewer than k keeps all
        assert counts.tolist() == expected.tolist()
        assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    for f in (0.1, 0.3, 0.5, 1.0):
        counts = np.bincount(y[subsample(y, fraction=f, seed=3)], minlength=4)
        assert counts.tolist() == [max(1, round(f * n)) for n in (30, 7, 2, 1)]
        assert counts.min() >= 1
    # deterministic per seed, different across seeds, nested within a seed
    assert np.array_equal(subsample(y, shots=4, seed=5), subsample(y, shots=4, seed=5))
    assert not np.array_equal(subsample(y, shots=4, seed=5), subsample(y, shots=4, seed=6))
    assert set(subsample(y, shots=2, seed=5)) <= set(subsample(y, shots=4, seed=5))
    assert set(subsample(y, fraction=0.1, seed=5)) <= set(subsample(y, fraction=0.5, seed=5))
    for kwargs in ({}, {"shots": 2, "fraction": 0.5}, {"shots": 0}, {"fraction": 1.5}):
        with pytest.raises(ValueError):
            subsample(y, **kwargs)


def _curve(**kwargs):
    rng = np.random.default_rng(9)
    x, y = _blobs(rng, 120, 3, spread=1.0)
    vx, vy = _blobs(rng, 60, 3, spread=1.0)
    tx, ty = _blobs(rng, 90, 3, spread=1.0)
    args = {"shots": (1, 4, 64), "fractions": (0.25, 1.0), "seeds": (0, 1), "n_boot": 50}
    args.update(kwargs)
    return (x, y, vx, vy, tx, ty), few_shot_curve(
        x, y, vx, vy, tx, ty, ["a", "b", "c"], Cs=CS, **args
    )


def test_few_shot_curve_bookkeeping_and_determinism() -> None:
    (x, y, vx, vy, tx, ty), results = _curve()
    settings = [(r.setting, r.seed) for r in results]
    # 64 shots exceeds every class (about 40 each) and 100% is the whole set: fitted once
    assert settings == [
        ("shots=1", 0),
        ("shots=1", 1),
        ("shots=4", 0),
        ("shots=4", 1),
        ("shots=64", 0),
        ("fraction=0.25", 0),
        ("fraction=0.25", 1),
        ("fraction=1", 0),
    ]
    by = {(r.setting, r.seed): r for r in results}
    assert by[("shots=1", 0)].n_train == 3
    assert by[("shots=4", 1)].n_train == 12
    assert by[("shots=64", 0)].n_train == 120
    assert by[("shots=64", 0)].short_classes == ("a", "b", "c")
    assert by[("shots=4", 0)].short_classes == ()
    assert by[("fraction=0.25", 0)].n_train == sum(round(0.25 * n) for n in np.bincount(y))
    # the full-data probe is the documented protocol run by hand, scored on the test split
    full = by[("fraction=1", 0)]
    chosen, _, model = _manual_choice(x, y, vx, vy, CS)
    assert chosen == full.C
    assert full.report["accuracy"].value == pytest.approx(accuracy_score(ty, model.predict(tx)))
    assert full.report["accuracy"].n == 90
    # same inputs, same results
    _, again = _curve()
    assert [r.to_dict() for r in again] == [r.to_dict() for r in results]


def test_few_shot_without_validation_split_holds_out_part_of_train() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 100, 2, spread=0.5)
    tx, ty = _blobs(rng, 40, 2, spread=0.5)
    results = few_shot_curve(
        x, y, None, None, tx, ty, ["a", "b"], shots=(2,), fractions=(1.0,), seeds=(0,), n_boot=0
    )
    full = results[-1]
    assert full.setting == "fraction=1"
    assert full.n_train == 100 - sum(round(0.2 * n) for n in np.bincount(y))
    assert full.report["balanced_accuracy"].value > 0.9


def test_few_shot_rejects_unlabelled_rows() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 30, 2)
    with pytest.raises(ValueError, match="index -1"):
        few_shot_curve(x, np.where(y == 0, -1, 1), x, y, x, y, ["a", "b"], n_boot=0)


def test_summary_table_and_plot(tmp_path: Path) -> None:
    _, results = _curve()
    summaries = {s.setting: s for s in summarize_few_shot(results)}
    runs = [r for r in results if r.setting == "shots=4"]
    values = [r.report["macro_f1"].value for r in runs]
    s4 = summaries["shots=4"]
    assert s4.n_seeds == 2
    assert s4.mean["macro_f1"] == pytest.approx(np.mean(values))
    assert s4.std["macro_f1"] == pytest.approx(np.std(values))
    assert (s4.low["macro_f1"], s4.high["macro_f1"]) == (min(values), max(values))
    assert s4.to_dict()["metrics"]["macro_f1"]["mean"] == pytest.approx(np.mean(values))

    table = few_shot_table(results).splitlines()
    assert table[0].startswith("| setting | n_train | seeds | C | balanced_accuracy")
    row4 = next(line for line in table if line.startswith("| shots=4 |"))
    assert f"{np.mean(values):.3f} ± {np.std(values):.3f}" in row4
    row_full = next(line for line in table if line.startswith("| fraction=1 |"))
    full = next(r for r in results if r.setting == "fraction=1")
    assert str(full.report["balanced_accuracy"]) in row_full  # one seed: value [CI]

    path = plot_few_shot(results, tmp_path / "plots" / "few_shot.png")
    assert path.stat().st_size > 5000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_on_real_ham10000_features(shared_data: Path, oc_model) -> None:
    """Embeddings of real dermoscopy images (tiny random-weight model): the probe runs end to
    end on them and is exactly the scikit-learn protocol."""
    folder = shared_data / "ham10000"
    with (folder / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] in ("nv", "bkl", "mel")]
    picked: list[dict[str, str]] = []
    for label in ("nv", "bkl", "mel"):
        of_label = [r for r in rows if r["label"] == label]
        picked += of_label[:: len(of_label) // 60][:60]
    emb = oc_model.embed_images([folder / r["file"] for r in picked], show_progress=False)
    assert emb.ok == list(range(len(picked)))
    x = emb.vectors.double().numpy()  # the probe fits in float64
    y = np.array([("nv", "bkl", "mel").index(r["label"]) for r in picked])
    order = np.random.default_rng(0).permutation(len(y))
    train, val, test = order[:100], order[100:140], order[140:]
    probe = LinearProbe(Cs=DEFAULT_CS).fit(x[train], y[train], x[val], y[val])
    chosen, _, model = _manual_choice(x[train], y[train], x[val], y[val], DEFAULT_CS)
    assert chosen == probe.C_
    np.testing.assert_allclose(
        probe.predict_proba(x[test]), model.predict_proba(x[test]), atol=1e-6
    )


@pytest.mark.parametrize("n_classes", [2, 4])
def test_probe_round_trips_through_arrays(n_classes: int) -> None:
    rng = np.random.default_rng(5)
    x, y = _blobs(rng, 120, n_classes, spread=0.8)
    probe = LinearProbe(Cs=CS, class_weight="balanced").fit(x[:80], y[:80], x[80:], y[80:])
    arrays = probe.to_arrays()
    restored = LinearProbe.from_arrays(arrays)
    assert restored.C_ == probe.C_ and list(restored.classes_) == list(probe.classes_)
    np.testing.assert_allclose(restored.predict_proba(x), probe.predict_proba(x), atol=1e-5)
    with pytest.raises(ValueError, match="lack"):
        LinearProbe.from_arrays({k: v for k, v in arrays.items() if k != "coef"})
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().to_arrays()
