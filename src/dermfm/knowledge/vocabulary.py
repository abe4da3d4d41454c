"""The clinical concept vocabulary (SkinCon, Derm7pt criteria, artifacts) with synonyms."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import packaged, read_document, require, string_list


@dataclass(frozen=True)
class Concept:
    """A visual concept and the phrases that describe it in prompts."""

    id: str
    name: str
    group: str
    synonyms: tuple[str, ...]
    description: str = ""
    skincon_name: str | None = None
    derm7pt: dict[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class ConceptVocabulary:
    """An ordered collection of :class:`Concept` objects, indexable by id."""

    concepts: tuple[Concept, ...]
    groups: dict[str, str] = field(hash=False, compare=False)
    version: str = ""

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts)

    def __getitem__(self, concept_id: str) -> Concept:
        for c in self.concepts:
            if c.id == concept_id:
                return c
        raise KeyError(f"no concept with id '{concept_id}'")

    def select(self, ids_or_groups: Sequence[str]) -> ConceptVocabulary:
        """A sub-vocabulary of the named concept ids and/or whole groups, in vocabulary order."""
        wanted = set(ids_or_groups)
        known = {c.id for c in self.concepts} | set(self.groups)
        unknown = wanted - known
        if unknown:
            raise KeyError(f"unknown concepts or groups: {', '.join(sorted(unknown))}")
        chosen = tuple(c for c in self.concepts if c.id in wanted or c.group in wanted)
        return ConceptVocabulary(chosen, self.groups, self.version)


def _parse(doc: dict[str, Any], path: Path) -> ConceptVocabulary:
    groups = doc.get("groups") or {}
    entries = doc.get("concepts")
    if not isinstance(entries, list) or not entries:
        raise KnowledgeError(path, "expected a non-empty list under 'concepts'")
    concepts: list[Concept] = []
    for i, entry in enumerate(entries):
        cid = str(require(entry, "id", path, f"concepts[{i}]"))
        where = f"concept '{cid}'"
        group = str(require(entry, "group", path, where))
        if groups and group not in groups:
            raise KnowledgeError(path, f"{where}: group '{group}' is not declared under 'groups'")
        synonyms = string_list(require(entry, "synonyms", path, where), path, where)
        concepts.append(
            Concept(
                id=cid,
                name=str(entry.get("name", cid)),
                group=group,
                synonyms=synonyms,
                description=str(entry.get("description", "")),
                skincon_name=entry.get("skincon_name"),
                derm7pt=entry.get("derm7pt"),
            )
        )
    ids = [c.id for c in concepts]
    if len(set(ids)) != len(ids):
        raise KnowledgeError(path, "concept ids must be unique")
    return ConceptVocabulary(tuple(concepts), dict(groups), str(doc.get("version", "")))


@lru_cache(maxsize=8)
def _load_cached(path: str) -> ConceptVocabulary:
    return _parse(read_document(path), Path(path))


def load_concepts(path: str | Path | None = None) -> ConceptVocabulary:
    """The packaged concept vocabulary, or the user's own file of the same schema."""
    return _load_cached(str(Path(path).resolve()) if path else str(packaged("concepts.yaml")))


def resolve_concepts(
    spec: ConceptVocabulary | str | Path | Sequence[str] | None = None,
    *,
    allow_files: bool = True,
) -> ConceptVocabulary:
    """A vocabulary from a :class:`ConceptVocabulary`, a vocabulary file, concept ids and/or
    group names of the packaged vocabulary (a list, or one comma-separated string), or ``None``
    for the whole packaged vocabulary.

    Args:
        spec: what to resolve.
        allow_files: ``False`` for values that come from someone who may not read this
            machine's files: a string is then only ever ids or group names, and the file system
            is never consulted.

    Raises:
        KeyError: unknown concept ids or groups.
        KnowledgeError: a vocabulary file that is missing or invalid.
    """
    if isinstance(spec, ConceptVocabulary):
        return spec
    if spec is None:
        return load_concepts()
    if allow_files and isinstance(spec, str | Path) and Path(spec).is_file():
        return load_concepts(spec)
    wanted = [spec] if isinstance(spec, str | Path) else list(spec)
    names = [w.strip() for item in wanted for w in str(item).split(",") if w.strip()]
    return load_concepts().select(names)
