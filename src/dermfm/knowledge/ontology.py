"""The skin-condition ontology: a tree of categories and conditions loaded from YAML."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import packaged, read_document, require, string_list

#: What an ICD-10-CM code looks like (``C43.9``, ``L22``, ``T78.3XXA``).
ICD10CM_PATTERN = re.compile(r"[A-TV-Z][0-9][0-9AB](\.[0-9A-Z]{1,4})?")

MALIGNANCY = ("benign", "premalignant", "malignant", "uncertain", "mixed", "not_neoplastic")
URGENCY = ("emergency", "urgent", "soon", "routine")
KINDS = ("category", "condition")


@dataclass(frozen=True)
class Node:
    """One ontology entry: a category (e.g. *malignant neoplasm*) or a condition."""

    id: str
    name: str
    kind: str
    parent: str | None
    description: str
    synonyms: tuple[str, ...] = ()
    malignancy: str | None = None
    urgency: str | None = None
    isic: str | None = None
    #: the ICD-10-CM code (``None``: none given, or ICD-10-CM has none for it)
    icd10cm: str | None = None
    #: the ICD-11 MMS code, where one is given
    icd11: str | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping of the node."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "parent": self.parent,
            "synonyms": list(self.synonyms),
            "malignancy": self.malignancy,
            "urgency": self.urgency,
            "isic": self.isic,
            "icd10cm": self.icd10cm,
            "icd11": self.icd11,
            "description": self.description,
        }


def _parse_node(entry: dict[str, Any], source: Path, index: int) -> Node:
    where = f"nodes[{index}]"
    node_id = str(require(entry, "id", source, where))
    where = f"node '{node_id}'"
    kind = entry.get("kind", "condition")
    if kind not in KINDS:
        raise KnowledgeError(source, f"{where}: kind must be one of {KINDS}, got {kind!r}")
    malignancy = entry.get("malignancy")
    urgency = entry.get("urgency")
    if kind == "condition":
        malignancy = require(entry, "malignancy", source, where)
        urgency = require(entry, "urgency", source, where)
    if malignancy is not None and malignancy not in MALIGNANCY:
        raise KnowledgeError(source, f"{where}: malignancy must be one of {MALIGNANCY}")
    if urgency is not None and urgency not in URGENCY:
        raise KnowledgeError(source, f"{where}: urgency must be one of {URGENCY}")
    codes: dict[str, str | None] = {}
    for system in ("icd10cm", "icd11"):
        value = entry.get(system)
        if value is not None and not isinstance(value, str):
            raise KnowledgeError(source, f"{where}: {system} must be a string code")
        codes[system] = value
    if codes["icd10cm"] is not None and not ICD10CM_PATTERN.fullmatch(codes["icd10cm"]):
        raise KnowledgeError(
            source, f"{where}: icd10cm {codes['icd10cm']!r} is not an ICD-10-CM code"
        )
    return Node(
        id=node_id,
        name=str(require(entry, "name", source, where)),
        kind=kind,
        parent=entry.get("parent"),
        description=str(entry.get("description") or ""),
        synonyms=string_list(entry.get("synonyms"), source, f"{where}: synonyms"),
        malignancy=malignancy,
        urgency=urgency,
        isic=entry.get("isic"),
        icd10cm=codes["icd10cm"],
        icd11=codes["icd11"],
        source=str(source),
    )


@dataclass(eq=False)  # identity semantics: hashable, so caches can key on it
class Ontology:
    """A validated tree of :class:`Node` objects with name lookup and ancestry queries."""

    nodes: dict[str, Node]
    version: str
    sources: tuple[str, ...]
    _children: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _by_name: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> Ontology:
        """Load and merge ontology files; later files may add nodes but never redefine one."""
        nodes: dict[str, Node] = {}
        versions: list[str] = []
        for path in paths:
            path = Path(path)
            doc = read_document(path)
            entries = doc.get("nodes")
            if not isinstance(entries, list) or not entries:
                raise KnowledgeError(path, "expected a non-empty list under 'nodes'")
            versions.append(str(doc.get("version", "unversioned")))
            for i, entry in enumerate(entries):
                node = _parse_node(entry, path, i)
                if node.id in nodes:
                    raise KnowledgeError(
                        path, f"node '{node.id}' is already defined in {nodes[node.id].source}"
                    )
                nodes[node.id] = node
        return cls(nodes=nodes, version="+".join(versions), sources=tuple(map(str, paths)))

    def __post_init__(self) -> None:
        roots = [n.id for n in self.nodes.values() if n.parent is None]
        if len(roots) != 1:
            raise KnowledgeError(
                ", ".join(self.sources), f"expected exactly one root node, found {roots}"
            )
        for node in self.nodes.values():
            if node.parent is not None:
                if node.parent not in self.nodes:
                    raise KnowledgeError(
                        node.source, f"node '{node.id}': parent '{node.parent}' is not defined"
                    )
                self._children.setdefault(node.parent, []).append(node.id)
        for node in self.nodes.values():
            self.ancestors(node.id)  # raises on cycles
            for text in (node.name, *node.synonyms):
                self._by_name.setdefault(text.casefold(), node.id)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __getitem__(self, node_id: str) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no ontology node with id '{node_id}'") from None

    @property
    def root(self) -> Node:
        """The single root node."""
        return next(n for n in self.nodes.values() if n.parent is None)

    def lookup(self, text: str) -> Node | None:
        """The node whose id, name or synonym equals ``text`` (case-insensitive), if any."""
        if text in self.nodes:
            return self.nodes[text]
        node_id = self._by_name.get(text.strip().casefold())
        return self.nodes[node_id] if node_id else None

    def ancestors(self, node_id: str, include_self: bool = True) -> list[Node]:
        """The chain from ``node_id`` up to the root (nearest first)."""
        chain: list[Node] = []
        seen: set[str] = set()
        current: str | None = node_id if include_self else self[node_id].parent
        while current is not None:
            if current in seen:
                raise KnowledgeError(self[node_id].source, f"cycle in parents at '{current}'")
            seen.add(current)
            node = self[current]
            chain.append(node)
            current = node.parent
        return chain

    def depth(self, node_id: str) -> int:
        """Number of edges between ``node_id`` and the root."""
        return len(self.ancestors(node_id)) - 1

    def children(self, node_id: str) -> list[Node]:
        """Direct children of a node."""
        return [self.nodes[c] for c in self._children.get(node_id, [])]

    def descendants(self, node_id: str) -> Iterable[Node]:
        """All nodes below ``node_id`` (depth first)."""
        for child in self.children(node_id):
            yield child
            yield from self.descendants(child.id)

    def attribute(self, node_id: str, name: str) -> str:
        """A node's ``malignancy`` or ``urgency``; a category without one takes the value its
        conditions share, or ``mixed`` when they differ."""
        own = getattr(self[node_id], name)
        if own:
            return own
        values = {getattr(n, name) for n in self.descendants(node_id) if n.kind == "condition"}
        return values.pop() if len(values) == 1 else "mixed"

    def conditions(self) -> list[Node]:
        """Every node of kind ``condition``, in file order."""
        return [n for n in self.nodes.values() if n.kind == "condition"]

    def path(self, node_id: str) -> str:
        """Human-readable path from the root, e.g. ``skin condition > neoplastic > ...``."""
        return " > ".join(n.name for n in reversed(self.ancestors(node_id)))


@lru_cache(maxsize=8)
def _load_cached(paths: tuple[str, ...]) -> Ontology:
    return Ontology.from_files(paths)


def load_ontology(extra: Sequence[str | Path] = ()) -> Ontology:
    """The packaged ontology, merged with the user's own ``extra`` YAML/JSON files."""
    paths = (str(packaged("ontology.yaml")), *(str(Path(p).resolve()) for p in extra))
    return _load_cached(paths)
