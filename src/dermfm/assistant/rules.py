"""Explicit safety rules: triage level and advice from the differential and the patient details.

Rules are data (``rules.yaml``; users add or override rules by id with their own files). A rule
fires when all its conditions hold; the triage level is the most pressing level among the rules
that fired, and every fired rule is reported with the reason it fired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermfm.assistant.report import (
    URGENCY_LEVELS,
    Differential,
    PatientDetails,
    RuleHit,
    Triage,
    percent,
)
from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import read_document, require

KINDS = ("candidate", "mass", "patient", "otherwise")
PATIENT_FLAGS = ("itch", "pain", "bleeding")
PATIENT_LISTS = ("evolution", "history")


@dataclass(frozen=True)
class Rule:
    """One safety rule (see ``rules.yaml`` for the condition kinds)."""

    id: str
    level: str
    when: tuple[dict[str, Any], ...]
    reason: str
    advice: str
    source: str


def _check_condition(cond: Any, source: Path, where: str) -> dict[str, Any]:
    kind = require(cond, "kind", source, where)
    if kind not in KINDS:
        raise KnowledgeError(source, f"{where}: unknown kind {kind!r} (one of {KINDS})")
    if kind in ("candidate", "mass"):
        require(cond, "attribute", source, where)
        if not isinstance(require(cond, "values", source, where), list):
            raise KnowledgeError(source, f"{where}: 'values' must be a list")
    if kind == "patient":
        field = require(cond, "field", source, where)
        if field not in PATIENT_FLAGS + PATIENT_LISTS:
            raise KnowledgeError(
                source,
                f"{where}: unknown patient field {field!r} "
                f"(one of {PATIENT_FLAGS + PATIENT_LISTS})",
            )
        if field in PATIENT_LISTS and not isinstance(cond.get("values"), list):
            raise KnowledgeError(source, f"{where}: patient field {field!r} needs 'values'")
    for key in ("top_k", "min_probability", "max_set_size"):
        if key in cond and not isinstance(cond[key], int | float):
            raise KnowledgeError(source, f"{where}: {key!r} must be a number")
    return dict(cond)


def load_rules(extra: Sequence[str | Path] = ()) -> list[Rule]:
    """The packaged rules, then each user file's (a rule with an existing id replaces it)."""
    rules: dict[str, Rule] = {}
    for path in (Path(__file__).with_name("rules.yaml"), *map(Path, extra)):
        entries = read_document(path).get("rules")
        if not isinstance(entries, list):
            raise KnowledgeError(path, "expected a list under 'rules'")
        for i, entry in enumerate(entries):
            where = f"rules[{i}]"
            rule_id = str(require(entry, "id", path, where))
            where = f"rule {rule_id!r}"
            level = require(entry, "level", path, where)
            if level not in URGENCY_LEVELS[1:]:
                raise KnowledgeError(
                    path, f"{where}: level {level!r} is not one of {URGENCY_LEVELS[1:]}"
                )
            when = require(entry, "when", path, where)
            if not isinstance(when, list) or not when:
                raise KnowledgeError(path, f"{where}: 'when' must be a non-empty list")
            rules[rule_id] = Rule(
                id=rule_id,
                level=level,
                when=tuple(_check_condition(c, path, where) for c in when),
                reason=str(require(entry, "reason", path, where)),
                advice=str(require(entry, "advice", path, where)),
                source=str(path),
            )
    return list(rules.values())


def _candidate_match(cond: Mapping[str, Any], differential: Differential) -> dict[str, Any] | None:
    candidates = differential.candidates
    ps = differential.prediction_set
    # membership of a large (uninformative) set does not count: see max_set_size in rules.yaml
    use_set = bool(cond.get("in_prediction_set")) and (
        ps is not None and len(ps.labels) <= cond.get("max_set_size", len(ps.labels))
    )
    for c in candidates:
        if getattr(c, cond["attribute"], None) not in cond["values"]:
            continue
        ranked = c.rank <= cond.get("top_k", len(candidates)) and c.probability >= cond.get(
            "min_probability", 0.0
        )
        if ranked or (use_set and c.in_prediction_set):
            return {
                "name": c.name,
                "rank": c.rank,
                "probability": percent(c.probability),
                "malignancy": c.malignancy,
                "urgency": c.urgency,
            }
    return None


def _condition(
    cond: Mapping[str, Any],
    differential: Differential | None,
    malignancy_classes: Mapping[str, Mapping[str, float]],
    patient: PatientDetails,
) -> dict[str, Any] | None:
    """The values a condition's reason may quote when it holds, else ``None``."""
    kind = cond["kind"]
    if kind == "patient":
        value = getattr(patient, cond["field"])
        if cond["field"] in PATIENT_LISTS:
            hits = [v for v in value if v in cond["values"]]
            return {cond["field"]: ", ".join(hits)} if hits else None
        return {} if value else None
    if differential is None:
        return None
    if kind == "candidate":
        return _candidate_match(cond, differential)
    mass = sum(malignancy_classes.get(cond["attribute"], {}).get(v, 0.0) for v in cond["values"])
    return {"probability": percent(mass)} if mass >= cond["min_probability"] else None


def triage(
    rules: Sequence[Rule],
    differential: Differential | None,
    patient: PatientDetails,
    masses: Mapping[str, Mapping[str, float]] | None = None,
) -> Triage:
    """Apply the rules.

    Args:
        differential: the differential (``None`` when the photo was not assessed: then only
            patient rules can fire; ``otherwise`` rules fire when a differential exists and no
            other rule fired).
        masses: probability mass per attribute value, e.g. ``{"malignancy": {"malignant": 0.3}}``
            (defaults to the differential's ``malignancy``).
    """
    if masses is None:
        masses = {"malignancy": differential.malignancy if differential else {}}
    fired: list[RuleHit] = []
    fallbacks = [r for r in rules if any(c["kind"] == "otherwise" for c in r.when)]
    for rule in [r for r in rules if r not in fallbacks]:
        values: dict[str, Any] = {}
        for cond in rule.when:
            found = _condition(cond, differential, masses, patient)
            if found is None:
                break
            values.update(found)
        else:
            fired.append(
                RuleHit(
                    rule=rule.id,
                    level=rule.level,  # type: ignore[arg-type]
                    reason=rule.reason.format_map(_Quoted(values)),
                    advice=rule.advice,
                )
            )
    if not fired and differential is not None:
        fired = [
            RuleHit(rule=r.id, level=r.level, reason=r.reason, advice=r.advice)  # type: ignore[arg-type]
            for r in fallbacks
        ]
    fired.sort(key=lambda h: -URGENCY_LEVELS.index(h.level))
    if not fired:
        return Triage(level="none", advice="")
    top = fired[0].level
    pressing = [h for h in fired if h.level == top]
    return Triage(level=top, fired=fired, advice=pressing[0].advice)


class _Quoted(dict):  # type: ignore[type-arg]
    """``format_map`` values that leave unknown fields visible instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


__all__ = ["KINDS", "Rule", "load_rules", "triage"]
