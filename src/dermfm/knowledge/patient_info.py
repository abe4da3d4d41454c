"""Plain-language condition information for the assistant's reports, loaded from YAML.

Each entry of ``dermfm/knowledge/data/patient_info.yaml`` is keyed by an ontology node id and says
what the condition is, its usual course, the kinds of treatment a clinician may consider (never
doses) and when to seek care. Every category node has an entry, so a lookup of any condition
falls back to the nearest broader entry. Users add or override entries with their own files
(same schema) passed by path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import packaged, read_document, require
from dermfm.knowledge.ontology import Ontology, load_ontology

if TYPE_CHECKING:
    from dermfm.assistant.report import ConditionInfo

PACKAGED_FILE = "patient_info.yaml"


@dataclass(frozen=True)
class PatientEntry:
    """The plain-language texts of one entry (one or two short sentences each)."""

    what_it_is: str
    usual_course: str
    treatments: str
    when_to_seek_care: str


#: The fields every entry must have, in file order.
TEXT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PatientEntry))


def _parse_entry(node_id: str, entry: Any, source: Path) -> PatientEntry:
    where = f"entry '{node_id}'"
    if isinstance(entry, dict):
        unknown = sorted(set(map(str, entry)) - set(TEXT_FIELDS))
        if unknown:
            raise KnowledgeError(
                source, f"{where}: unknown field(s) {unknown}; expected {list(TEXT_FIELDS)}"
            )
    texts: dict[str, str] = {}
    for name in TEXT_FIELDS:
        value = require(entry, name, source, where)
        if not isinstance(value, str) or not value.strip():
            raise KnowledgeError(source, f"{where}: field '{name}' must be non-empty text")
        texts[name] = " ".join(value.split())
    return PatientEntry(**texts)


def _parse_document(
    doc: dict[str, Any], source: Path, ontology: Ontology
) -> dict[str, PatientEntry]:
    entries = doc.get("entries")
    if not isinstance(entries, dict) or not entries:
        raise KnowledgeError(
            source, "expected a non-empty mapping under 'entries' (node id: texts)"
        )
    parsed: dict[str, PatientEntry] = {}
    for key, entry in entries.items():
        node_id = str(key)
        if node_id not in ontology:
            raise KnowledgeError(
                source, f"entry '{node_id}': '{node_id}' is not a node id of the ontology"
            )
        parsed[node_id] = _parse_entry(node_id, entry, source)
    return parsed


@dataclass(frozen=True, eq=False)  # identity semantics, like Ontology
class PatientInfo:
    """Validated plain-language entries keyed by ontology node id.

    Attributes:
        entries: node id -> :class:`PatientEntry` (read-only).
        ontology: the ontology the node ids were checked against; the default for lookups.
        version: the files' ``version`` values joined by ``+``.
        sources: the files read, in order (later files override earlier ones).
    """

    entries: Mapping[str, PatientEntry]
    ontology: Ontology
    version: str = ""
    sources: tuple[str, ...] = ()

    @classmethod
    def from_files(
        cls, paths: Sequence[str | Path], ontology: Ontology | None = None
    ) -> PatientInfo:
        """Load entry files in order; a later file's entry replaces an earlier one of the same
        node. Errors name the file, the entry and the field."""
        return cls(MappingProxyType({}), ontology or load_ontology()).extended(paths)

    def extended(self, paths: Sequence[str | Path]) -> PatientInfo:
        """A copy with the entries of ``paths`` added or overriding (later files win)."""
        entries = dict(self.entries)
        versions = [self.version] if self.version else []
        for path in map(Path, paths):
            doc = read_document(path)
            entries.update(_parse_document(doc, path, self.ontology))
            versions.append(str(doc.get("version", "unversioned")))
        return PatientInfo(
            entries=MappingProxyType(entries),
            ontology=self.ontology,
            version="+".join(versions),
            sources=(*self.sources, *map(str, paths)),
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def lookup(self, node_id: str, ontology: Ontology | None = None) -> ConditionInfo | None:
        """Information on ``node_id``: its own entry, or else that of its nearest ancestor with
        one (``source`` names the entry used; ``node`` and ``name`` stay the asked node's).

        ``ontology`` defaults to the one the entries were checked against; pass a user-extended
        ontology to look up its new nodes. ``None`` when the node is not in the ontology or no
        node on its path to the root has an entry.
        """
        from dermfm.assistant.report import ConditionInfo

        onto = ontology or self.ontology
        if node_id not in onto:
            return None
        for node in onto.ancestors(node_id):
            entry = self.entries.get(node.id)
            if entry is not None:
                return ConditionInfo(
                    node=node_id, name=onto[node_id].name, source=node.id, **asdict(entry)
                )
        return None


@lru_cache(maxsize=4)
def _packaged_info(ontology: Ontology) -> PatientInfo:
    return PatientInfo.from_files([packaged(PACKAGED_FILE)], ontology)


def load_patient_info(
    extra: Sequence[str | Path] = (), ontology: Ontology | None = None
) -> PatientInfo:
    """The packaged entries (cached), with the user's ``extra`` YAML/JSON files adding or
    overriding entries (later files win; they are read on every call).

    ``ontology`` (default: the packaged one) is what node ids are checked against; pass
    ``load_ontology(user_files)`` when the extra entries describe user-defined nodes.
    """
    base = _packaged_info(ontology or load_ontology())
    return base.extended(extra) if extra else base
