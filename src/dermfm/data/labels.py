"""A dataset row's label and the label-set class it falls in: one-hot or parsed label cells,
the spec's label set or an automatic one built from the labels found (linked to the ontology)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dermfm.data.dataset_spec import LABEL_PARSERS
from dermfm.data.manifest import ManifestError
from dermfm.knowledge import LabelClass, LabelSet, load_label_set, load_ontology


def raw_label(
    spec: Mapping[str, Any], values: Mapping[str, str], where: str
) -> tuple[str | None, str]:
    """The label of a table row (its cells ``values``; ``where`` names it in errors), or
    ``None`` and the reason it has none."""
    if spec.get("label_onehot"):
        scores: dict[str, float] = {}
        for column in spec["label_onehot"]:
            try:
                scores[column] = float(values.get(column) or 0)
            except ValueError:
                raise ManifestError(
                    where, f"one-hot column {column!r} holds {values[column]!r}"
                ) from None
        best = max(scores.values())
        winners = [c for c, v in scores.items() if v == best]
        if best <= 0:
            return None, "no label"
        return (winners[0], "") if len(winners) == 1 else (None, "ambiguous label")
    value = values.get(str(spec.get("label_column", "label")), "")
    if value and spec.get("label_parse"):
        value = LABEL_PARSERS[spec["label_parse"]](value)
    return (value, "") if value else (None, "no label")


def _slug_words(text: str) -> str:
    """``Acute_Eczema`` -> ``Acute Eczema``; text with spaces keeps its hyphens."""
    if " " in text.strip():
        return " ".join(text.split())
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def automatic_label_set(
    name: str, labels: Sequence[str], declared: Sequence[str] | None, spec: Mapping[str, Any]
) -> LabelSet:
    """Classes of the labels found: declared order first, then sorted; linked to the ontology."""
    ontology = load_ontology()
    order = list(dict.fromkeys(declared or []))
    order += sorted(set(labels) - set(order))
    classes = []
    for label in order:
        text = _slug_words(label)
        node = ontology.lookup(label) or ontology.lookup(text)
        classes.append(LabelClass(label=label, name=text, node=node.id if node else None))
    return LabelSet(
        name=name,
        classes=tuple(classes),
        description=f"automatic: the labels found in dataset {name!r}",
        modality=str(spec.get("modality", "mixed")),
        source=str(spec.get("spec_file", "")),
    )


def spec_label_set(spec: Mapping[str, Any]) -> LabelSet:
    """The spec's ``label_set``: a file beside the spec file, else a packaged name or a path."""
    value = str(spec["label_set"])
    beside = Path(spec.get("spec_file", "")).parent / value
    return load_label_set(beside if beside.is_file() else value)


def class_finder(label_set: LabelSet) -> Callable[[str], LabelClass | None]:
    """Label-set class of a label: by label, else by ontology node when only one class has it."""
    by_label = {c.label: c for c in label_set.classes}
    nodes = Counter(c.node for c in label_set.classes if c.node)
    by_node = {c.node: c for c in label_set.classes if c.node and nodes[c.node] == 1}
    return lambda label: by_label.get(label) or by_node.get(label)
