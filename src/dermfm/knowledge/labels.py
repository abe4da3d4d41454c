"""Named label sets (ham7, pad6, derm7pt, f17k114, dermnet, assistant, all) and user-defined
ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import packaged, read_document, require
from dermfm.knowledge.ontology import Ontology, load_ontology


@dataclass(frozen=True)
class LabelClass:
    """One class of a label set.

    Attributes:
        label: the dataset's own label string (e.g. ``mel``).
        name: the text put into prompt templates (e.g. ``melanoma``).
        node: the ontology node id, or ``None`` for free-text classes outside the ontology.
    """

    label: str
    name: str
    node: str | None


@dataclass(frozen=True)
class LabelSet:
    """An ordered list of classes to diagnose among."""

    name: str
    classes: tuple[LabelClass, ...]
    description: str = ""
    modality: str = "mixed"
    source: str = ""

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[str]:
        """The dataset label strings, in class order."""
        return [c.label for c in self.classes]

    @property
    def names(self) -> list[str]:
        """The prompt names, in class order."""
        return [c.name for c in self.classes]


def _parse_classes(
    name: str, entries: Any, ontology: Ontology, source: str | Path
) -> tuple[LabelClass, ...]:
    if not isinstance(entries, list) or not entries:
        raise KnowledgeError(source, f"label set '{name}': 'classes' must be a non-empty list")
    classes: list[LabelClass] = []
    for i, entry in enumerate(entries):
        where = f"label set '{name}', classes[{i}]"
        if isinstance(entry, str):
            classes.append(_free_text_class(entry, ontology))
            continue
        label = str(require(entry, "label", source, where))
        node = entry.get("node")
        if node is not None and node not in ontology:
            raise KnowledgeError(source, f"{where}: node '{node}' is not in the ontology")
        if node is None:
            found = ontology.lookup(str(entry.get("name", label)))
            node = found.id if found else None
        classes.append(LabelClass(label=label, name=str(entry.get("name", label)), node=node))
    seen: set[str] = set()
    for c in classes:
        if c.label in seen:
            raise KnowledgeError(source, f"label set '{name}': label '{c.label}' appears twice")
        seen.add(c.label)
    return tuple(classes)


def _free_text_class(text: str, ontology: Ontology) -> LabelClass:
    """A class given only by a name: linked to the ontology when the name is known there."""
    text = text.strip()
    node = ontology.lookup(text)
    return LabelClass(label=text, name=text, node=node.id if node else None)


def _union(
    name: str, members: Any, sets: dict[str, LabelSet], source: str | Path
) -> tuple[LabelClass, ...]:
    """Classes of earlier label sets merged by ontology node (the first name of a node wins;
    the label is the node id, or the class label for classes outside the ontology)."""
    if not isinstance(members, list) or not members:
        raise KnowledgeError(source, f"label set '{name}': 'union_of' must be a non-empty list")
    merged: dict[str, LabelClass] = {}
    for member in members:
        if member not in sets:
            raise KnowledgeError(
                source, f"label set '{name}': union_of names '{member}', not an earlier set"
            )
        for c in sets[member].classes:
            key = c.node or c.label
            merged.setdefault(key, LabelClass(label=key, name=c.name, node=c.node))
    return tuple(merged.values())


@lru_cache(maxsize=4)
def _packaged_sets(ontology: Ontology) -> dict[str, LabelSet]:
    path = packaged("label_sets.yaml")
    doc = read_document(path)
    sets: dict[str, LabelSet] = {}
    for set_name, spec in (doc.get("label_sets") or {}).items():
        classes = (
            _union(set_name, spec["union_of"], sets, path)
            if "union_of" in spec
            else _parse_classes(set_name, spec.get("classes"), ontology, path)
        )
        sets[set_name] = LabelSet(
            name=set_name,
            classes=classes,
            description=str(spec.get("description", "")),
            modality=str(spec.get("modality", "mixed")),
            source=str(path),
        )
    sets["all"] = LabelSet(
        name="all",
        classes=tuple(LabelClass(n.id, n.name, n.id) for n in ontology.conditions()),
        description="Every condition of the ontology (computed, not a benchmark label set).",
        source=f"computed from {ontology.sources[0]}",
    )
    return sets


def label_set_names(ontology: Ontology | None = None) -> list[str]:
    """Names of the packaged label sets, ``all`` included."""
    return list(_packaged_sets(ontology or load_ontology()))


def _from_file(path: Path, ontology: Ontology) -> LabelSet:
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        doc = read_document(path)
        name = str(doc.get("name", path.stem))
        return LabelSet(
            name=name,
            classes=_parse_classes(name, doc.get("classes"), ontology, path),
            description=str(doc.get("description", "")),
            modality=str(doc.get("modality", "mixed")),
            source=str(path),
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KnowledgeError(path, f"cannot read label file ({exc})") from exc
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise KnowledgeError(path, "label file has no class names")
    return LabelSet(
        name=path.stem,
        classes=_parse_classes(path.stem, names, ontology, path),
        source=str(path),
    )


def load_label_set(
    spec: str | Path | Sequence[str] | LabelSet,
    ontology: Ontology | None = None,
    *,
    allow_files: bool = True,
) -> LabelSet:
    """Resolve a label set from a packaged name, a file (YAML/JSON/one name per line) or a list.

    A list of strings, or a comma-separated string, gives free-text classes, each linked to the
    ontology node whose name or synonym matches it (so hierarchical roll-up still works).

    Args:
        spec: what to resolve.
        ontology: the ontology classes are linked to (the packaged one by default).
        allow_files: ``False`` for values that come from someone who may not read this
            machine's files (e.g. a request to the server): a string is then only ever a
            packaged name or a comma-separated list; the file system is never consulted, so the
            answer is the same whether or not a file of that name exists.

    Raises:
        KnowledgeError: ``spec`` is none of these, or a file that is not a valid label set.
    """
    if isinstance(spec, LabelSet):
        return spec
    ontology = ontology or load_ontology()
    if isinstance(spec, (list, tuple)):
        return LabelSet(
            name="custom", classes=_parse_classes("custom", list(spec), ontology, "<list>")
        )
    text = str(spec)
    packaged_sets = _packaged_sets(ontology)
    if text in packaged_sets:
        return packaged_sets[text]
    if allow_files and Path(text).is_file():
        return _from_file(Path(text), ontology)
    if "," in text:
        return load_label_set([t for t in text.split(",") if t.strip()], ontology)
    accepted = (
        "a packaged label set, an existing file, or a comma-separated list"
        if allow_files
        else "a packaged label set or a list of class names (files cannot be named here)"
    )
    raise KnowledgeError(
        text if allow_files else "labels",
        f"not {accepted} (packaged sets: {', '.join(packaged_sets)})",
    )
