"""dermfm.evaluate.metrics against scikit-learn, and the bootstrap's statistical behaviour."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from dermfm.evaluate import (
    Estimate,
    accuracy,
    auroc,
    balanced_accuracy,
    bootstrap,
    classification_report,
    estimates_table,
    macro_auroc,
    macro_f1,
    top_k_accuracy,
)
from dermfm.evaluate.metrics import PairedComparison, ovr_aurocs, paired_bootstrap, weighted_f1

SEEDS = [0, 1, 2, 3, 4]


def _labels(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced true labels and noisy predictions of them, both in [0, c)."""
    p = rng.dirichlet(np.ones(c))
    y = rng.choice(c, size=n, p=p)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    return y, pred


def _scores(rng: np.random.Generator, y: np.ndarray, c: int, ties: bool) -> np.ndarray:
    """Scores correlated with y; with ``ties`` they are rounded to one decimal (many ties)."""
    s = rng.normal(size=(y.shape[0], c))
    s[np.arange(y.shape[0]), y] += 1.0
    return np.round(s, 1) if ties else s


# --------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", SEEDS)
def test_label_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(20, 400)), int(rng.integers(2, 9))
    y, pred = _labels(rng, n, c)
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert weighted_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    labels = list(range(c + 2))  # two labels absent from both: F1 0 each, as sklearn
    subset = [0, 1]
    for average, ours in (("macro", macro_f1), ("weighted", weighted_f1)):
        for chosen in (labels, subset):
            assert ours(y, pred, labels=chosen) == pytest.approx(
                skm.f1_score(y, pred, labels=chosen, average=average, zero_division=0)
            )
    # lists and string labels work too
    names = np.array(["nv", "mel", "bcc", "akiec", "bkl", "df", "vasc", "scc", "x"])
    ys, ps = list(names[y]), list(names[pred])
    assert balanced_accuracy(ys, ps) == pytest.approx(skm.balanced_accuracy_score(ys, ps))
    assert macro_f1(ys, ps) == pytest.approx(skm.f1_score(ys, ps, average="macro"))
    assert weighted_f1(ys, ps) == pytest.approx(skm.f1_score(ys, ps, average="weighted"))


def test_balanced_accuracy_only_over_true_classes() -> None:
    # class 2 is predicted but never true: it does not enter the mean of recalls
    y = [0, 0, 1, 1]
    pred = [0, 2, 1, 1]
    assert balanced_accuracy(y, pred) == pytest.approx((0.5 + 1.0) / 2)
    # macro F1 over the union {0, 1, 2}: F1(0)=2/3, F1(1)=1, F1(2)=0
    assert macro_f1(y, pred) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


HAM_PRIOR = np.array([0.033, 0.051, 0.110, 0.011, 0.111, 0.670, 0.014])  # akiec..vasc


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realistic_imbalanced_case_matches_sklearn(seed: int) -> None:
    """HAM10000-like priors; a nevus-biased model that never predicts df or vasc."""
    rng = np.random.default_rng(seed)
    n, c = 1500, 7
    y = rng.choice(c, size=n, p=HAM_PRIOR)
    s = _scores(rng, y, c, ties=False)
    s[:, 5] += 1.5  # over-predicts nevus
    s[:, [3, 6]] -= 10.0  # df and vasc never predicted
    pred = s.argmax(axis=1)
    assert not np.isin(pred, [3, 6]).any()
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert weighted_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    for k in (1, 2, 3):
        assert top_k_accuracy(y, s, k) == pytest.approx(
            skm.top_k_accuracy_score(y, s, k=k, labels=range(c))
        )
    expected = [skm.roc_auc_score(y == k, s[:, k]) for k in range(c)]
    np.testing.assert_allclose(ovr_aurocs(y, s), expected)
    probs = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    assert macro_auroc(y, probs) == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )


def test_weighted_f1_by_hand() -> None:
    # F1(0) = 2/3 (support 2), F1(1) = 1 (support 2), F1(2) = 0 (support 0: weight 0)
    assert weighted_f1([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx((2 * 2 / 3 + 2 * 1.0) / 4)
    # only the listed label 2, never true: no support, 0.0 as sklearn's zero_division=0
    assert weighted_f1([0, 1], [0, 2], labels=[2]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 500))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    score = rng.normal(size=n) + y
    if ties:
        score = np.round(score)  # a handful of distinct values: heavy ties
    expected = skm.roc_auc_score(y, score)
    assert auroc(y, score) == pytest.approx(expected)
    assert auroc(y.astype(int).tolist(), score.tolist()) == pytest.approx(expected)


def test_auroc_ties_count_half() -> None:
    assert auroc([0, 1], [0.3, 0.3]) == pytest.approx(0.5)
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
    assert auroc([1, 0], [0.1, 0.9]) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_macro_auroc_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(30, 400)), int(rng.integers(3, 9))
    y, _ = _labels(rng, n, c)
    s = _scores(rng, y, c, ties)
    defined = [k for k in range(c) if 0 < np.sum(y == k) < n]
    expected = np.mean([skm.roc_auc_score(y == k, s[:, k]) for k in defined])
    assert macro_auroc(y, s) == pytest.approx(expected)
    if len(defined) == c:  # every class present: sklearn's own one-vs-rest macro average
        probs = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
        assert macro_auroc(y, probs) == pytest.approx(
            skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        )


def test_macro_auroc_skips_absent_classes() -> None:
    y = np.array([0, 0, 1, 1])  # classes 2 and 3 absent: averaged over 0 and 1 only
    s = np.array(
        [[0.9, 0.1, 0.5, 0.2], [0.2, 0.1, 0.5, 0.3], [0.1, 0.8, 0.5, 0.2], [0.3, 0.2, 0.5, 0.1]]
    )
    expected = (skm.roc_auc_score(y == 0, s[:, 0]) + skm.roc_auc_score(y == 1, s[:, 1])) / 2
    assert macro_auroc(y, s) == pytest.approx(expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_ovr_aurocs_match_sklearn_per_class(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(30, 400)), int(rng.integers(3, 9))
    y, _ = _labels(rng, n, c)
    y[y == c - 1] = 0  # the last class is absent: NaN
    s = _scores(rng, y, c, ties)
    got = ovr_aurocs(y, s)
    assert got.shape == (c,)
    for k in range(c):
        if 0 < np.sum(y == k) < n:
            assert got[k] == pytest.approx(skm.roc_auc_score(y == k, s[:, k]))
        else:
            assert np.isnan(got[k])
    assert np.isnan(got[c - 1])
    assert macro_auroc(y, s) == pytest.approx(np.nanmean(got))


def test_ovr_aurocs_single_class_all_nan() -> None:
    got = ovr_aurocs([1, 1, 1], np.random.default_rng(0).random((3, 3)))
    assert np.isnan(got).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_matches_sklearn(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(30, 400)), int(rng.integers(6, 10))
    y = rng.integers(0, c, n)
    y[:3] = [0, 1, 2]  # multi-class for sklearn
    labels = list(range(c))
    s = _scores(rng, y, c, ties=False)
    assert top_k_accuracy(y, s, k) == pytest.approx(
        skm.top_k_accuracy_score(y, s, k=k, labels=labels)
    )
    # with ties: sklearn breaks them towards the higher column, dermfm towards the lower one,
    # so reversing the columns makes the two rules agree
    st = _scores(rng, y, c, ties=True)
    assert top_k_accuracy(y, st, k) == pytest.approx(
        skm.top_k_accuracy_score(c - 1 - y, st[:, ::-1], k=k, labels=labels)
    )
    if k == 1:
        assert top_k_accuracy(y, st, 1) == pytest.approx(accuracy(y, st.argmax(axis=1)))


def test_top_k_edge_cases() -> None:
    y = [0, 1, 2]
    s = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.1]]
    assert top_k_accuracy(y, s, 1) == pytest.approx(1 / 3)  # tie: column 0 wins
    assert top_k_accuracy(y, s, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, s, 3) == 1.0
    assert top_k_accuracy(y, s, 10) == 1.0


# --------------------------------------------------------------------------- validation


def test_auroc_one_class_raises() -> None:
    with pytest.raises(ValueError, match="one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        auroc([False, False], [0.1, 0.2])
    with pytest.raises(ValueError, match="one class"):
        macro_auroc([2, 2, 2], np.random.default_rng(0).random((3, 4)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: accuracy([0, 1], [0]), "differ in length"),
        (lambda: accuracy([], []), "empty"),
        (lambda: balanced_accuracy([[0, 1]], [[0, 1]]), "1-D"),
        (lambda: macro_f1([0, 1], [0, 1, 1]), "differ in length"),
        (lambda: macro_f1([0, 1], [0, 1], labels=[]), "non-empty"),
        (lambda: macro_f1([0, 1], [0, 1], labels=[0, 0]), "duplicates"),
        (lambda: auroc([0, 2], [0.1, 0.2]), "0/1"),
        (lambda: auroc([0, 1], [0.1, np.nan]), "finite"),
        (lambda: auroc([0, 1], [0.1]), "differ in length"),
        (lambda: top_k_accuracy([0, 1], [0.1, 0.2], 1), "2-D"),
        (lambda: top_k_accuracy([0, 3], np.zeros((2, 3)), 1), "columns"),
        (lambda: top_k_accuracy([0, -1], np.zeros((2, 3)), 1), "columns"),
        (lambda: top_k_accuracy([0, 1], np.zeros((3, 3)), 1), "differ in length"),
        (lambda: top_k_accuracy([0, 1], np.zeros((2, 3)), 0), "k must be"),
        (lambda: top_k_accuracy([0.0, 1.0], np.zeros((2, 3)), 1), "integer"),
        (lambda: macro_auroc([0, 1], np.zeros((2, 1))), "columns"),
        (lambda: macro_auroc([0, 1], [[0.1, np.inf], [0.2, 0.3]]), "NaN or infinite"),
        (lambda: bootstrap(accuracy), "at least one array"),
        (lambda: bootstrap(accuracy, [0, 1], [0, 1, 1]), "differ in length"),
        (lambda: bootstrap(accuracy, [0, 1], [0, 1], n_boot=-1), "n_boot"),
        (lambda: bootstrap(accuracy, [0, 1], [0, 1], alpha=1.5), "alpha"),
        (lambda: bootstrap(accuracy, [0, 1], [0, 1], groups=[0]), "groups"),
        (lambda: classification_report([0, 1], np.eye(2), ["a"]), "class names"),
        (
            lambda: classification_report([0, 1], np.eye(2), ["a", "a"], per_class_auroc=True),
            "duplicates",
        ),
        (lambda: weighted_f1([0, 1], [0]), "differ in length"),
        (lambda: weighted_f1([0, 1], [0, 1], labels=[1, 1]), "duplicates"),
        (lambda: ovr_aurocs([0, 1], [0.1, 0.2]), "2-D"),
        (lambda: ovr_aurocs([0, 2], np.zeros((2, 2))), "columns"),
        (lambda: ovr_aurocs([0.5, 1.0], np.zeros((2, 2))), "integer"),
        (lambda: paired_bootstrap(accuracy, [0, 1], [0, 1], [0, 1, 1]), "differ in length"),
        (lambda: paired_bootstrap(accuracy, [0, 1], [0, 1], [[0, 1], [1, 0]]), "differ in shape"),
        (lambda: paired_bootstrap(accuracy, [0, 1], [0, 1], [1, 1], groups=[0]), "groups"),
        (lambda: paired_bootstrap(accuracy, [0, 1], [0, 1], [1, 1], n_boot=-2), "n_boot"),
        (lambda: paired_bootstrap(accuracy, [0, 1], [0, 1], [1, 1], alpha=0), "alpha"),
        (lambda: paired_bootstrap(accuracy, [], [], []), "empty"),
    ],
)
def test_input_validation(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- bootstrap


def _bernoulli(seed: int, n: int, p: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that are right with probability ``p``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < p, y, (y + 1) % 3)
    return y, pred


def test_bootstrap_deterministic_for_seed() -> None:
    y, pred = _bernoulli(0, 300)
    a = bootstrap(accuracy, y, pred, n_boot=200, seed=7)
    b = bootstrap(accuracy, y, pred, n_boot=200, seed=7)
    c = bootstrap(accuracy, y, pred, n_boot=200, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.value == c.value == pytest.approx(accuracy(y, pred))
    groups = np.arange(300) // 3
    assert bootstrap(accuracy, y, pred, n_boot=200, seed=7, groups=groups) == bootstrap(
        accuracy, y, pred, n_boot=200, seed=7, groups=groups
    )


def test_bootstrap_estimate_fields() -> None:
    y, pred = _bernoulli(1, 500)
    est = bootstrap(balanced_accuracy, y, pred, n_boot=300, seed=0)
    assert est.name == "balanced_accuracy"
    assert est.n == 500
    assert est.n_boot == 300
    assert est.low <= est.value <= est.high
    assert str(est) == f"{est.value:.3f} [{est.low:.3f}, {est.high:.3f}]"
    assert json.loads(json.dumps(est.to_dict())) == {
        "name": "balanced_accuracy",
        "value": est.value,
        "low": est.low,
        "high": est.high,
        "n": 500,
        "n_boot": 300,
    }
    assert bootstrap(lambda a, b: accuracy(a, b), y, pred, n_boot=5, name="acc").name == "acc"


def test_estimate_str_format() -> None:
    assert str(Estimate("a", 0.8123, 0.78449, 0.8391, 10, 100)) == "0.812 [0.784, 0.839]"
    assert str(Estimate("a", 0.8123, math.nan, math.nan, 10, 0)) == "0.812"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_ci_contains_point_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 400)
    s = _scores(rng, y, 5, ties=False)
    est = bootstrap(macro_auroc, y, s, n_boot=200, seed=seed)
    assert est.low < est.value < est.high
    assert est.high - est.low < 0.2


def test_bootstrap_ci_shrinks_with_n() -> None:
    small = bootstrap(accuracy, *_bernoulli(3, 100), n_boot=300)
    large = bootstrap(accuracy, *_bernoulli(3, 3000), n_boot=300)
    small_w, large_w = small.high - small.low, large.high - large.low
    # width ~ 1/sqrt(n): a factor of about sqrt(30) ~ 5.5
    assert large_w < small_w / 3
    assert 0.12 < small_w < 0.26  # 2 * 1.96 * sqrt(0.21 / 100) ~ 0.18


def test_bootstrap_coverage() -> None:
    hits = 0
    for rep in range(50):
        est = bootstrap(accuracy, *_bernoulli(100 + rep, 200), n_boot=300, seed=rep)
        hits += est.low <= 0.7 <= est.high
    assert hits >= 40


def test_cluster_bootstrap_wider_when_rows_duplicated() -> None:
    y, pred = _bernoulli(5, 200)
    yy, pp = np.repeat(y, 5), np.repeat(pred, 5)  # each group's row 5 times
    groups = np.repeat([f"lesion_{i}" for i in range(200)], 5)
    rows = bootstrap(accuracy, yy, pp, n_boot=400, seed=0)
    clustered = bootstrap(accuracy, yy, pp, n_boot=400, seed=0, groups=groups)
    single = bootstrap(accuracy, y, pred, n_boot=400, seed=0)
    assert rows.value == clustered.value == single.value
    rows_w, cl_w, single_w = (e.high - e.low for e in (rows, clustered, single))
    assert cl_w > 1.6 * rows_w  # ~ sqrt(5) = 2.2 wider
    assert cl_w == pytest.approx(single_w, rel=0.3)  # as wide as the undeduplicated data


def test_bootstrap_skips_undefined_resamples() -> None:
    # one positive among 20: about (19/20)^20 ~ 36% of resamples have no positive
    y = np.zeros(20, dtype=int)
    y[0] = 1
    score = np.linspace(0.0, 1.0, 20)
    est = bootstrap(auroc, y, score, n_boot=500, seed=0)
    assert est.value == pytest.approx(skm.roc_auc_score(y, score))
    assert 200 < est.n_boot < 450
    assert est.low <= est.high

    def never(*_: object) -> float:
        raise ValueError("undefined")

    with pytest.raises(ValueError, match="undefined"):
        bootstrap(never, [1, 2, 3], n_boot=10)


def test_bootstrap_all_resamples_undefined() -> None:
    calls = {"n": 0}

    def first_only(a: np.ndarray) -> float:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("undefined")
        return float(a.mean())

    est = bootstrap(first_only, np.arange(10.0), n_boot=50)
    assert est.n_boot == 0
    assert math.isnan(est.low) and math.isnan(est.high)
    assert est.value == pytest.approx(4.5)


def test_bootstrap_speed() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 2000)
    pred = rng.integers(0, 7, 2000)
    start = time.perf_counter()
    bootstrap(balanced_accuracy, y, pred, n_boot=1000)
    assert time.perf_counter() - start < 3.0


# --------------------------------------------------------------------------- paired bootstrap


def _two_models(
    seed: int, n: int, p_a: float, p_b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' predictions, right independently with probabilities p_a, p_b."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    a = np.where(rng.random(n) < p_a, y, (y + 1) % 4)
    b = np.where(rng.random(n) < p_b, y, (y + 2) % 4)
    return y, a, b


def test_paired_identical_models() -> None:
    y, a, _ = _two_models(0, 300, 0.7, 0.7)
    cmp = paired_bootstrap(accuracy, y, a, a.copy(), n_boot=300)
    assert cmp.value_a == cmp.value_b == pytest.approx(skm.accuracy_score(y, a))
    assert cmp.difference.value == 0.0
    assert cmp.difference.low == cmp.difference.high == 0.0
    assert cmp.p_value == 1.0
    assert cmp.n == cmp.difference.n == 300
    assert cmp.difference.n_boot == 300


def test_paired_clearly_better_model() -> None:
    y, a, b = _two_models(1, 400, 0.6, 0.8)
    cmp = paired_bootstrap(balanced_accuracy, y, a, b, n_boot=500, seed=3)
    assert cmp.name == "balanced_accuracy"
    assert cmp.value_a == pytest.approx(skm.balanced_accuracy_score(y, a))
    assert cmp.value_b == pytest.approx(skm.balanced_accuracy_score(y, b))
    # the difference is b - a, positive when b is better
    assert cmp.difference.value == pytest.approx(cmp.value_b - cmp.value_a)
    assert 0.0 < cmp.difference.low <= cmp.difference.value <= cmp.difference.high
    assert cmp.p_value < 0.05
    assert cmp.p_value == pytest.approx(2 / 501)  # no resample with d <= 0: the floor 2/(B+1)
    swapped = paired_bootstrap(balanced_accuracy, y, b, a, n_boot=500, seed=3)
    assert swapped.difference.value == pytest.approx(-cmp.difference.value)
    assert swapped.difference.high < 0.0
    assert swapped.p_value == cmp.p_value


def test_paired_p_value_is_the_definition() -> None:
    """p = min(1, 2 min(1 + #{d <= 0}, 1 + #{d >= 0}) / (B + 1)) over the same resamples."""
    y, a, b = _two_models(2, 120, 0.7, 0.75)
    n_boot, seed = 400, 5
    cmp = paired_bootstrap(accuracy, y, a, b, n_boot=n_boot, seed=seed)
    # the same resamples as bootstrap() with this seed: bootstrap the difference directly
    diff = bootstrap(
        lambda t, x, z: accuracy(t, z) - accuracy(t, x), y, a, b, n_boot=n_boot, seed=seed
    )
    assert (cmp.difference.low, cmp.difference.high) == (diff.low, diff.high)
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.shape[0], y.shape[0])
        d.append(np.mean(y[idx] == b[idx]) - np.mean(y[idx] == a[idx]))
    d = np.array(d)
    expected = min(1.0, 2 * min(1 + np.sum(d <= 0), 1 + np.sum(d >= 0)) / (n_boot + 1))
    assert 0.05 < cmp.p_value < 1.0
    assert cmp.p_value == pytest.approx(expected)


def test_paired_beats_unpaired_on_correlated_models() -> None:
    """b fixes 4% of a's errors: separate intervals overlap, the paired test still sees it."""
    rng = np.random.default_rng(4)
    n = 500
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    fixed = rng.choice(np.flatnonzero(a != y), size=20, replace=False)
    b = a.copy()
    b[fixed] = y[fixed]
    ea = bootstrap(accuracy, y, a, n_boot=400)
    eb = bootstrap(accuracy, y, b, n_boot=400)
    assert eb.low < ea.high  # the separate intervals overlap
    cmp = paired_bootstrap(accuracy, y, a, b, n_boot=400)
    assert cmp.difference.value == pytest.approx(20 / n)
    assert cmp.difference.low > 0.0
    assert cmp.p_value < 0.01


def test_paired_p_value_not_small_under_null() -> None:
    """Two models with the same accuracy distribution: p-values spread over (0, 1]."""
    pvals = np.array(
        [
            paired_bootstrap(
                accuracy, *_two_models(50 + rep, 150, 0.7, 0.7), n_boot=200, seed=rep
            ).p_value
            for rep in range(60)
        ]
    )
    assert np.mean(pvals < 0.05) <= 0.12
    assert 0.3 < np.median(pvals) < 0.75
    assert np.mean(pvals > 0.5) > 0.3


def test_paired_cluster_mode_keeps_groups_together() -> None:
    y, a, b = _two_models(6, 200, 0.65, 0.72)
    groups = np.repeat(np.arange(50), 4)  # 50 lesions of 4 images
    seen: list[np.ndarray] = []

    def complete_groups(t: np.ndarray, pred: np.ndarray) -> float:
        # y_true carries the group id here: every drawn group arrives with all 4 rows
        counts = np.bincount(t, minlength=50)
        seen.append(counts)
        return float(np.mean(pred))

    paired_bootstrap(complete_groups, groups, a, b, groups=groups, n_boot=50)
    assert len(seen) == 2 + 2 * 50
    assert all(np.all(c % 4 == 0) for c in seen)

    # duplicated rows: the clustered test is as uncertain as the undeduplicated data
    yy, aa, bb = (np.repeat(x, 5) for x in (y, a, b))
    ids = np.repeat(np.arange(200), 5)
    single = paired_bootstrap(accuracy, y, a, b, n_boot=400)
    rows = paired_bootstrap(accuracy, yy, aa, bb, n_boot=400)
    clustered = paired_bootstrap(accuracy, yy, aa, bb, groups=ids, n_boot=400)
    width = {
        k: e.difference.high - e.difference.low
        for k, e in {"single": single, "rows": rows, "clustered": clustered}.items()
    }
    assert width["clustered"] > 1.6 * width["rows"]
    assert width["clustered"] == pytest.approx(width["single"], rel=0.3)
    assert clustered.p_value > rows.p_value


def test_paired_score_matrices_and_serialisation() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 300)
    sa = _scores(rng, y, 5, ties=False)
    sb = sa + rng.normal(scale=0.5, size=sa.shape)
    sb[np.arange(300), y] += 0.8  # b separates the classes better
    cmp = paired_bootstrap(macro_auroc, y, sa, sb, n_boot=200, name="auroc")
    assert isinstance(cmp, PairedComparison)
    assert cmp.name == "auroc"
    assert cmp.value_b > cmp.value_a
    assert cmp.p_value < 0.05
    data = json.loads(json.dumps(cmp.to_dict()))
    assert data["difference"]["value"] == pytest.approx(cmp.value_b - cmp.value_a)
    assert set(data) == {"name", "value_a", "value_b", "difference", "p_value", "n"}
    assert str(cmp).startswith(f"auroc: a {cmp.value_a:.3f}, b {cmp.value_b:.3f}, b - a ")


# --------------------------------------------------------------------------- report and table


def test_classification_report() -> None:
    rng = np.random.default_rng(0)
    c, n = 7, 600
    y = rng.integers(0, c, n)
    s = _scores(rng, y, c, ties=False)
    names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rep = classification_report(y, s, names, n_boot=200, seed=0, top_k=(1, 3, 5, 7))
    assert list(rep) == [
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "macro_auroc",
        "top3_accuracy",
        "top5_accuracy",
    ]
    pred = s.argmax(axis=1)
    assert rep["accuracy"].value == pytest.approx(skm.accuracy_score(y, pred))
    assert rep["balanced_accuracy"].value == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert rep["macro_f1"].value == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert rep["weighted_f1"].value == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    ovr = np.mean([skm.roc_auc_score(y == k, s[:, k]) for k in range(c)])
    assert rep["macro_auroc"].value == pytest.approx(ovr)
    assert rep["top3_accuracy"].value == pytest.approx(
        skm.top_k_accuracy_score(y, s, k=3, labels=range(c))
    )
    for key, est in rep.items():
        assert est.name == key
        assert est.n == n
        assert est.n_boot == 200
        assert est.low <= est.value <= est.high
    # same resamples, same seed: the accuracy CI equals a standalone bootstrap's
    alone = bootstrap(accuracy, y, pred, n_boot=200, seed=0)
    assert (alone.low, alone.high) == (rep["accuracy"].low, rep["accuracy"].high)

    groups = np.arange(n) // 4
    grouped = classification_report(y, s, names, groups=groups, n_boot=100, top_k=(1,))
    assert set(grouped) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "macro_auroc",
    }


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_report_per_class_auroc() -> None:
    rng = np.random.default_rng(1)
    c, n = 7, 500
    y = rng.choice(c, size=n, p=HAM_PRIOR)
    y[y == 3] = 5  # no df at all: its AUROC is undefined and left out
    s = _scores(rng, y, c, ties=True)
    names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rep = classification_report(y, s, names, n_boot=150, top_k=(2,), per_class_auroc=True)
    per_class = [f"auroc[{name}]" for name in names if name != "df"]
    assert list(rep) == [
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "macro_auroc",
        "top2_accuracy",
        *per_class,
    ]
    for k, name in enumerate(names):
        if name != "df":
            est = rep[f"auroc[{name}]"]
            assert est.value == pytest.approx(skm.roc_auc_score(y == k, s[:, k]))
            assert est.low <= est.value <= est.high
    assert rep["macro_auroc"].value == pytest.approx(np.mean([rep[key].value for key in per_class]))
    # the shared AUROC computation leaves the other metrics' intervals unchanged
    plain = classification_report(y, s, names, n_boot=150, top_k=(2,))
    assert list(plain) == list(rep)[:6]
    assert all(plain[key] == rep[key] for key in plain)
    alone = bootstrap(macro_auroc, y, s, n_boot=150)
    assert (alone.low, alone.high) == (rep["macro_auroc"].low, rep["macro_auroc"].high)


def test_classification_report_single_class_drops_auroc() -> None:
    s = np.random.default_rng(0).random((30, 3))
    rep = classification_report(np.zeros(30, dtype=int), s, ["a", "b", "c"], n_boot=20)
    assert "macro_auroc" not in rep
    assert rep["accuracy"].value == pytest.approx(np.mean(s.argmax(axis=1) == 0))


def test_estimates_table() -> None:
    a = Estimate("accuracy", 0.8123, 0.7844, 0.8391, 100, 1000)
    f = Estimate("macro_f1", 0.5, 0.4, 0.6, 100, 1000)
    u = Estimate("macro_auroc", 0.91, 0.88, 0.93, 50, 990)
    table = estimates_table(
        {"ham10000": {"accuracy": a, "macro_f1": f}, "pad|ufes": {"macro_auroc": u, "accuracy": a}}
    )
    lines = table.strip().splitlines()
    assert len(lines) == 4
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["", "accuracy", "macro_f1", "macro_auroc"]
    assert set(lines[1].replace("|", "")) == {"-"}
    assert lines[2].startswith("| ham10000 |")
    assert "0.812 [0.784, 0.839]" in lines[2]
    assert "0.500 [0.400, 0.600]" in lines[2]
    assert lines[2].rstrip().endswith("| — |")
    assert "pad\\|ufes" in lines[3]
    assert "0.910 [0.880, 0.930]" in lines[3]
    assert "| 0.812 [0.784, 0.839] | — | 0.910 [0.880, 0.930] |" in lines[3]
