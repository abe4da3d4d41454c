"""Safety rules: which rule fires, the triage level it sets, and user rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermfm.assistant.report import Candidate, Differential, PatientDetails, PredictionSet
from dermfm.assistant.rules import load_rules, triage
from dermfm.errors import KnowledgeError


def _cand(
    rank: int, name: str, p: float, malignancy: str, urgency: str = "routine", in_set: bool = False
) -> Candidate:
    return Candidate(
        rank=rank,
        label=name,
        name=name,
        node=name,
        probability=p,
        malignancy=malignancy,
        urgency=urgency,
        in_prediction_set=in_set,
    )


def _dx(
    *candidates: Candidate, malignant_mass: float = 0.0, set_size: int | None = None
) -> Differential:
    ps = None
    if set_size is not None:
        ps = PredictionSet(
            labels=[f"c{i}" for i in range(set_size)],
            names=[f"c{i}" for i in range(set_size)],
            coverage=0.9,
            method="LAC",
            calibrated_on="val",
        )
    return Differential(
        label_set="t",
        candidates=list(candidates),
        malignancy={"malignant": malignant_mass},
        probability_kind="raw",
        calibrated=False,
        prediction_set=ps,
    )


RULES = load_rules()


#: The packaged malignant-candidate thresholds (tuned on validation splits: they are data, so the
#: tests read them rather than restate them).
CANDIDATE = next(r for r in RULES if r.id == "malignant-candidate").when[0]
MASS = next(r for r in RULES if r.id == "malignant-mass").when[0]


def test_malignant_candidate_at_its_lowest_rank_and_probability_is_urgent() -> None:
    rank, p = CANDIDATE["top_k"], CANDIDATE["min_probability"]
    benign = [_cand(i, f"benign{i}", 0.9 / rank, "benign") for i in range(1, rank)]
    dx = _dx(*benign, _cand(rank, "melanoma", p, "malignant", "urgent"), malignant_mass=p)
    assert p < MASS["min_probability"]  # so only the candidate rule can fire
    result = triage(RULES, dx, PatientDetails())
    assert result.level == "urgent"
    fired = {h.rule: h for h in result.fired}
    assert "malignant-candidate" in fired
    assert "melanoma" in fired["malignant-candidate"].reason
    assert f"ranked {rank}" in fired["malignant-candidate"].reason
    assert "routine" not in fired  # the default advice only when nothing else fired


def test_benign_differential_is_routine_with_the_default_advice() -> None:
    rank, p = CANDIDATE["top_k"], CANDIDATE["min_probability"]
    dx = _dx(
        _cand(1, "nevus", 0.7, "benign"),
        _cand(rank, "melanoma", p / 2, "malignant", "urgent"),  # below the candidate's minimum
        _cand(rank + 1, "melanoma in situ", p, "malignant", "urgent"),  # ranked too low
        malignant_mass=1.5 * p,
    )
    result = triage(RULES, dx, PatientDetails())
    assert result.level == "routine"
    assert [h.rule for h in result.fired] == ["routine"]


def test_malignant_mass_fires_when_spread_over_low_ranks() -> None:
    dx = _dx(
        _cand(1, "nevus", 0.5, "benign"),
        _cand(2, "a", 0.1, "benign"),
        _cand(3, "b", 0.1, "benign"),
        malignant_mass=0.25,
    )
    assert "malignant-mass" in {h.rule for h in triage(RULES, dx, PatientDetails()).fired}


def test_prediction_set_membership_counts_only_for_small_sets() -> None:
    low = _cand(4, "melanoma", 0.01, "malignant", "urgent", in_set=True)
    top = [_cand(i, f"benign{i}", 0.3, "benign") for i in (1, 2, 3)]
    small = triage(RULES, _dx(*top, low, set_size=4), PatientDetails())
    large = triage(RULES, _dx(*top, low, set_size=40), PatientDetails())
    assert small.level == "urgent"
    assert large.level == "routine"


def test_reported_change_with_malignant_candidate_is_urgent() -> None:
    dx = _dx(
        _cand(1, "nevus", 0.8, "benign"),
        _cand(2, "x", 0.1, "benign"),
        _cand(3, "y", 0.05, "benign"),
        _cand(5, "melanoma", 0.01, "malignant", "urgent"),
    )
    calm = triage(RULES, dx, PatientDetails())
    changing = triage(RULES, dx, PatientDetails(evolution=["growing"]))
    assert calm.level == "routine"
    assert changing.level == "urgent"
    hit = next(h for h in changing.fired if h.rule == "changing-lesion-with-malignant-candidate")
    assert "growing" in hit.reason and "melanoma" in hit.reason


def test_emergency_condition_wins_over_urgent() -> None:
    dx = _dx(
        _cand(1, "toxic epidermal necrolysis", 0.5, "not_neoplastic", "emergency"),
        _cand(2, "melanoma", 0.3, "malignant", "urgent"),
    )
    result = triage(RULES, dx, PatientDetails())
    assert result.level == "emergency"
    assert result.fired[0].rule == "emergency-candidate"


def test_without_a_differential_only_patient_rules_fire() -> None:
    assert triage(RULES, None, PatientDetails()).level == "none"
    result = triage(RULES, None, PatientDetails(bleeding=True))
    assert result.level == "soon"
    assert [h.rule for h in result.fired] == ["bleeding-lesion"]


def test_user_rules_add_and_override_by_id(tmp_path: Path) -> None:
    extra = tmp_path / "clinic_rules.yaml"
    extra.write_text(
        "schema_version: 1\nrules:\n"
        "  - id: routine\n    level: soon\n    when: [{kind: otherwise}]\n"
        "    reason: clinic policy\n    advice: Book a review.\n"
        "  - id: itchy\n    level: routine\n    when: [{kind: patient, field: itch}]\n"
        "    reason: itch reported\n    advice: Moisturise.\n",
        encoding="utf-8",
    )
    rules = load_rules([extra])
    assert sum(r.id == "routine" for r in rules) == 1
    dx = _dx(_cand(1, "nevus", 0.9, "benign"))
    assert triage(rules, dx, PatientDetails()).level == "soon"
    assert "itchy" in {h.rule for h in triage(rules, dx, PatientDetails(itch=True)).fired}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "rules:\n  - {id: a, level: severe, when: [{kind: otherwise}], reason: r, advice: a}",
            "level 'severe'",
        ),
        (
            "rules:\n  - {id: a, level: soon, when: [{kind: weather}], reason: r, advice: a}",
            "unknown kind 'weather'",
        ),
        ("rules:\n  - {id: a, level: soon, when: [], reason: r, advice: a}", "non-empty list"),
        (
            "rules:\n  - {id: a, level: soon, when: [{kind: patient, field: mood}], reason: r, "
            "advice: a}",
            "unknown patient field",
        ),
        ("rules:\n  - {id: a, level: soon, when: [{kind: otherwise}], reason: r}", "advice"),
        ("rules: 3", "expected a list"),
    ],
)
def test_bad_rule_files_name_the_file_and_problem(tmp_path: Path, body: str, problem: str) -> None:
    bad = tmp_path / "bad_rules.yaml"
    bad.write_text("schema_version: 1\n" + body + "\n", encoding="utf-8")
    with pytest.raises(KnowledgeError) as info:
        load_rules([bad])
    assert "bad_rules.yaml" in str(info.value)
    assert problem in str(info.value)


def test_near_certain_scores_never_read_as_certain() -> None:
    dx = _dx(_cand(1, "melanoma", 0.998, "malignant", "urgent"), malignant_mass=0.999)
    result = triage(RULES, dx, PatientDetails())
    reasons = " ".join(h.reason for h in result.fired)
    assert "100%" not in reasons and ">99%" in reasons
