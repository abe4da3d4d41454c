"""Measure, and tune on validation splits, the assistant's urgent flag on ../shared/data.

Every image of the chosen split of the six sources (HAM10000, Derm7pt, DermNet NZ,
Fitzpatrick17k, PAD-UFES-20, SD-198) gets one image-only consultation with the bundled model and
the packaged calibration, rules and skin reference (``Assistant().consult``, the path users run).
A case is **malignant** when its source says so (Fitzpatrick17k's ``three_partition_label``,
PAD-UFES-20's biopsy-proven BCC/MEL/SCC; ``malignant`` in ``sources.yaml``), else when its
ontology condition's ``malignancy`` is ``malignant``; it is **benign** when the source says it is
not malignant or its condition is ``benign`` or ``not_neoplastic`` (premalignant conditions are
neither). Reported per source and per skin-type group (I-II, III-IV, V-VI) where the source has
skin types:

* urgent-flag recall: malignant cases whose triage is ``urgent`` or ``emergency``, over **all**
  malignant cases (a photo the quality check refused counts as not flagged, and the refusals are
  counted apart);
* over-triage: benign cases flagged urgent or emergency, over all benign cases assessed;
* the share of skin photos refused, and scikit-image's sample photos (not skin) refused.

``--tune`` re-applies the rules (:func:`dermfm.assistant.rules.triage`, the same function) to
the validation split's differentials with other thresholds for the two image rules of the
urgent level (``malignant-candidate``: ``top_k`` and ``min_probability``; ``malignant-mass``:
``min_probability``) and picks, **on validation images only**, safety first: among the settings
whose recall is at least ``--recall`` (0.95) in every source and skin-type group (of at least 20
cases), the one with the lowest highest over-triage (ties: the higher lowest recall); when no
setting reaches the floor, it is lowered in steps of 0.05 until one does (the output says which
floor was used). It prints the Pareto front and writes the choice to
``docs/assistant_rule_tuning.json``; the thresholds in ``src/dermfm/assistant/rules.yaml`` are
then set from it by hand (they are data, reviewed).

Without ``--tune`` the script writes ``docs/assistant_safety.json`` and regenerates the table
between the ``safety-table`` markers of ``docs/assistant.md``.

``--benign-per-dataset N`` consults every malignant (and premalignant) image but only an evenly
spread N of each source's benign ones: recall stays over all malignant cases, over-triage is
then measured on that sample (the output says so).

``--cases FILE`` keeps the consultations (their differentials) in a pickle: a later run with
the same file re-applies the current rules without consulting again (rules are a pure function
of the differential), e.g. after setting the thresholds that ``--tune`` chose.

    python scripts/measure_assistant_safety.py [--split test] [--per-dataset N]
        [--benign-per-dataset N] [--cases FILE] [--tune]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dermfm.assistant.consult import Assistant
from dermfm.assistant.report import Differential, PatientDetails
from dermfm.assistant.rules import Rule, triage
from dermfm.data import read_dataset
from dermfm.knowledge import Ontology, load_ontology
from dermfm.progress import progress

SOURCES = ("ham10000", "derm7pt", "dermnet_nz", "fitzpatrick17k_21", "pad_ufes20", "sd198_27")
NAMES = {
    "ham10000": "HAM10000",
    "derm7pt": "Derm7pt",
    "dermnet_nz": "DermNet NZ",
    "fitzpatrick17k_21": "Fitzpatrick17k",
    "pad_ufes20": "PAD-UFES-20",
    "sd198_27": "SD-198",
}
SKIN_GROUPS = {
    "I": "I-II",
    "II": "I-II",
    "III": "III-IV",
    "IV": "III-IV",
    "V": "V-VI",
    "VI": "V-VI",
}
URGENT = ("urgent", "emergency")
#: groups with fewer malignant (for recall) or benign (for over-triage) validation cases do not
#: steer the tuning: a rate over a handful of photos is noise (they are still reported)
MIN_GROUP = 20
DOC = Path("docs/assistant.md")
MARKERS = ("<!-- safety-table:start -->", "<!-- safety-table:end -->")
# the tuning grid of the two image rules of the urgent level
CANDIDATE_TOP_K = (1, 2, 3, 5)
CANDIDATE_MIN_P = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
MASS_MIN_P = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.01)


@dataclass
class Case:
    """One consulted image: where it belongs and what the assistant found."""

    groups: tuple[str, ...]  # the source, and "source skin-type group" where known
    malignant: bool | None  # None: neither malignant nor benign (premalignant, unknown)
    differential: Differential | None  # None: the photo was refused
    urgent: bool


def skin_group(value: str | None) -> str | None:
    """``I-II``, ``III-IV`` or ``V-VI`` from a record's Fitzpatrick type (``I``...``VI``)."""
    return SKIN_GROUPS.get(value or "")


def is_malignant(metadata: dict[str, str], label: str | None, ontology: Ontology) -> bool | None:
    """The source's own flag when it has one, else the condition's ontology malignancy
    (``None``: premalignant or unknown, counted neither way)."""
    if metadata.get("malignant") is not None:
        return metadata["malignant"] == "1"
    kind = ontology.attribute(label, "malignancy") if label and label in ontology else None
    return {"malignant": True, "benign": False, "not_neoplastic": False}.get(str(kind))


def consult_split(
    assistant: Assistant,
    root: str,
    split: str,
    per_dataset: int | None,
    benign_per_dataset: int | None = None,
) -> list[Case]:
    """One consultation per image of ``split`` in every source."""
    ontology = load_ontology()
    cases: list[Case] = []
    for source in SOURCES:
        records = read_dataset(source, root).splits.get(split, [])
        if per_dataset:
            records = records[:: max(1, len(records) // per_dataset)][:per_dataset]
        if benign_per_dataset:
            benign = [r for r in records if is_malignant(r.metadata, r.label, ontology) is False]
            step = max(1, len(benign) // benign_per_dataset)
            kept, benign_ids = (
                {id(r) for r in benign[::step][:benign_per_dataset]},
                set(map(id, benign)),
            )
            records = [r for r in records if id(r) in kept or id(r) not in benign_ids]
        with progress(f"{source} {split}", len(records), True) as advance:
            for record in records:
                report = assistant.consult(record.image)
                advance(1)
                group = skin_group(record.metadata.get("skin_type"))
                cases.append(
                    Case(
                        groups=(source, *([f"{source} {group}"] if group else [])),
                        malignant=is_malignant(record.metadata, record.label, ontology),
                        differential=report.differential,
                        urgent=report.triage.level in URGENT,
                    )
                )
    return cases


def table(cases: Sequence[Case], flagged: Sequence[bool] | None = None) -> dict[str, dict]:
    """Counts and rates per source and skin-type group; ``flagged`` overrides each case's flag."""
    flags = [c.urgent for c in cases] if flagged is None else flagged
    out: dict[str, dict] = {}
    for case, urgent in zip(cases, flags, strict=True):
        for name in case.groups:
            row = out.setdefault(
                name,
                dict.fromkeys(
                    ("images", "refused", "malignant", "malignant_urgent", "malignant_refused",
                     "benign", "benign_urgent"),
                    0,
                ),
            )  # fmt: skip
            row["images"] += 1
            row["refused"] += case.differential is None
            if case.malignant:
                row["malignant"] += 1
                row["malignant_urgent"] += urgent
                row["malignant_refused"] += case.differential is None
            elif case.malignant is False and case.differential is not None:
                row["benign"] += 1
                row["benign_urgent"] += urgent
    for row in out.values():
        row["recall"] = (
            round(row["malignant_urgent"] / row["malignant"], 4) if row["malignant"] else None
        )
        row["over_triage"] = (
            round(row["benign_urgent"] / row["benign"], 4) if row["benign"] else None
        )
        row["refused_rate"] = round(row["refused"] / row["images"], 4)
    return out


def variant(rules: Sequence[Rule], top_k: int, min_p: float, mass: float) -> list[Rule]:
    """The rules with other thresholds for ``malignant-candidate`` and ``malignant-mass``."""
    changed = {
        "malignant-candidate": {"top_k": top_k, "min_probability": min_p},
        "malignant-mass": {"min_probability": mass},
    }
    out = []
    for rule in rules:
        if rule.id in changed:
            when = tuple({**c, **changed[rule.id]} for c in rule.when)
            rule = dataclasses.replace(rule, when=when)
        out.append(rule)
    return out


def tune(assistant: Assistant, cases: Sequence[Case], recall: float) -> dict:
    """Every threshold setting scored on ``cases`` (validation), the Pareto front and the pick."""
    patient = PatientDetails()
    scored = []
    for top_k, min_p, mass in itertools.product(CANDIDATE_TOP_K, CANDIDATE_MIN_P, MASS_MIN_P):
        rules = variant(assistant.rules, top_k, min_p, mass)
        flags = [
            c.differential is not None and triage(rules, c.differential, patient).level in URGENT
            for c in cases
        ]
        rows = table(cases, flags)
        recalls = [
            r["recall"]
            for r in rows.values()
            if r["recall"] is not None and r["malignant"] >= MIN_GROUP
        ]
        overs = [
            r["over_triage"]
            for r in rows.values()
            if r["over_triage"] is not None and r["benign"] >= MIN_GROUP
        ]
        scored.append(
            {
                "malignant-candidate": {"top_k": top_k, "min_probability": min_p},
                "malignant-mass": {"min_probability": mass},
                "lowest_recall": min(recalls),
                "highest_over_triage": max(overs),
                "groups": rows,
            }
        )
    front = [
        s
        for s in scored
        if not any(
            o["lowest_recall"] >= s["lowest_recall"]
            and o["highest_over_triage"] <= s["highest_over_triage"]
            and (o["lowest_recall"], -o["highest_over_triage"])
            != (s["lowest_recall"], -s["highest_over_triage"])
            for o in scored
        )
    ]
    used = recall  # no setting reaches the floor: it is lowered in steps of 0.05, never dropped
    while not (within := [s for s in scored if s["lowest_recall"] >= used - 1e-9]):
        used = round(used - 0.05, 2)
    pick = min(within, key=lambda s: (s["highest_over_triage"], -s["lowest_recall"]))
    return {
        "recall_floor": recall,
        "recall_floor_used": used,
        "pareto_front": front,
        "chosen": pick,
        "settings": len(scored),
    }


def markdown(rows: dict[str, dict], split: str, cases: int, benign_cap: int | None) -> str:
    """The Markdown table of ``rows`` for docs/assistant.md."""

    def rate(value: float | None, count: int) -> str:
        return "-" if value is None else f"{100 * value:.1f}% of {count}"

    lines = [
        f"{cases} {split} images: every image of every source's {split} split"
        + (
            f" except benign ones, of which {benign_cap} per source (evenly spread)"
            if benign_cap
            else ""
        )
        + ", image only (no patient details); `docs/assistant_safety.json`:",
        "",
        "| source / skin type | malignant | urgent-flag recall | refused among malignant "
        "| benign | over-triage (benign flagged) | photos refused |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        source, _, group = name.partition(" ")
        label = f"{NAMES.get(source, source)} {group}".strip()
        lines.append(
            f"| {label} | {row['malignant']} | {rate(row['recall'], row['malignant'])} | "
            f"{row['malignant_refused']} | {row['benign']} | "
            f"{rate(row['over_triage'], row['benign'])} | {100 * row['refused_rate']:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--split", default=None, help="default: test (val with --tune)")
    parser.add_argument("--per-dataset", type=int, default=None)
    parser.add_argument("--benign-per-dataset", type=int, default=None)
    parser.add_argument("--cases", type=Path, help="pickle of the consultations (reused)")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--recall", type=float, default=0.95, help="recall floor (--tune)")
    args = parser.parse_args()
    split = args.split or ("val" if args.tune else "test")
    assistant = Assistant()
    if args.cases and args.cases.is_file():
        cases = pickle.loads(args.cases.read_bytes())
        patient = PatientDetails()
        for case in cases:  # the current rules on the stored differentials
            verdict = triage(assistant.rules, case.differential, patient)
            case.urgent = case.differential is not None and verdict.level in URGENT
    else:
        cases = consult_split(
            assistant, args.root, split, args.per_dataset, args.benign_per_dataset
        )
        if args.cases:
            args.cases.write_bytes(pickle.dumps(cases))
    if args.tune:
        result = tune(assistant, cases, args.recall)
        out = Path("docs/assistant_rule_tuning.json")
        out.write_text(json.dumps({"split": split, **result}, indent=2) + "\n", encoding="utf-8")
        seen = set()
        for s in sorted(result["pareto_front"], key=lambda s: s["lowest_recall"]):
            if (s["lowest_recall"], s["highest_over_triage"]) in seen:
                continue  # the same figures with other thresholds: the first stands for them
            seen.add((s["lowest_recall"], s["highest_over_triage"]))
            print(
                f"candidate {s['malignant-candidate']} mass {s['malignant-mass']}: lowest recall "
                f"{s['lowest_recall']:.3f}, highest over-triage {s['highest_over_triage']:.3f}"
            )
        print("chosen:", json.dumps({k: result["chosen"][k] for k in list(result["chosen"])[:4]}))
        print(f"recall floor {result['recall_floor']}, used {result['recall_floor_used']}")
        return
    rows = table(cases)
    try:
        import skimage

        photos = sorted((Path(skimage.__file__).parent / "data").glob("*.[pj][np]g"))
        refused = sum(assistant.consult(p).differential is None for p in photos)
        rows["non_skin_photos"] = {"images": len(photos), "refused": refused}
    except ImportError:
        pass
    Path("docs/assistant_safety.json").write_text(
        json.dumps(
            {"split": split, "benign_per_dataset": args.benign_per_dataset, "groups": rows},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    shown = {k: v for k, v in rows.items() if "recall" in v}
    text = markdown(shown, split, len(cases), args.benign_per_dataset)
    doc = DOC.read_text(encoding="utf-8")
    start, end = doc.index(MARKERS[0]) + len(MARKERS[0]), doc.index(MARKERS[1])
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:], encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
