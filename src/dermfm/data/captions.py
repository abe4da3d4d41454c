"""Multi-aspect caption synthesis for label-only images (MAKE's text views, built from data).

For each record, :class:`CaptionSynthesizer` produces one text per *view*:

* ``ontology``: the diagnosis with its place in the ontology,
* ``concept``: the concepts known to be present (e.g. Derm7pt criteria),
* ``metadata``: modality, body site, age and sex,
* ``free``: templated free-text variants of the diagnosis,
* ``caption``: one of the record's real captions, when it has any.

Templates live in ``knowledge/data/captions.yaml`` (or a user file of the same shape). Views
without the data they need are ``None``; the training losses mask them out.
"""

from __future__ import annotations

import random
import re
from functools import cached_property
from pathlib import Path

from dermfm.data.manifest import Record
from dermfm.knowledge import load_concepts, load_ontology
from dermfm.knowledge.files import packaged, read_document

#: Every view name, in the order of the text tensors the losses receive.
VIEWS = ("ontology", "concept", "metadata", "free", "caption")
_FIELD = re.compile(r"{(\w+)}")


class CaptionSynthesizer:
    """Sample one text per view for a record; deterministic for a given ``random.Random``.

    Args:
        views: the views to produce, in order (a subset of :data:`VIEWS`).
        path: a captions YAML file; the packaged ``captions.yaml`` by default.
    """

    def __init__(self, views: tuple[str, ...] = VIEWS, path: str | Path | None = None) -> None:
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown caption views {unknown}; known: {', '.join(VIEWS)}")
        self.views = tuple(views)
        self.file = Path(path) if path else packaged("captions.yaml")
        doc = read_document(self.file)
        self.templates: dict[str, list[str]] = doc["views"]
        self.modality: dict[str, list[str]] = doc["modality"]
        self.sex: dict[str, list[str]] = doc.get("sex", {})
        self.ontology = load_ontology()

    @cached_property
    def _concept_names(self) -> dict[str, tuple[str, ...]]:
        return {c.id: (c.name, *c.synonyms) for c in load_concepts()}

    def _concept_phrase(self, record: Record, rng: random.Random) -> str | None:
        present = [c for c, on in record.concepts.items() if on]
        # keep the most specific concept of each family (drop "streaks" when
        # "irregular streaks" is also present)
        specific = [c for c in present if not any(o != c and o.endswith("_" + c) for o in present)]
        names = [rng.choice(self._concept_names.get(c, (c.replace("_", " "),))) for c in specific]
        if not names:
            return None
        rng.shuffle(names)
        return ", ".join(names)

    def fields(self, record: Record, rng: random.Random) -> dict[str, str | None]:
        """Values for the template placeholders of one record (``None`` where unknown)."""
        meta = record.metadata
        node = self.ontology.nodes.get(record.label) if record.label else None
        names = [meta["class_name"]] if meta.get("class_name") else []
        if node is not None:
            names += [node.name, *node.synonyms]
        elif record.label:
            names.append(record.label.replace("_", " "))
        parent = self.ontology.nodes.get(node.parent) if node and node.parent else None
        modality = self.modality.get(meta.get("modality", ""), self.modality["default"])
        sex = self.sex.get(meta.get("sex", "").lower())
        age = meta.get("age", "").split(".")[0]
        return {
            "name": rng.choice(names) if names else None,
            "parent": parent.name if parent else None,
            "path": self.ontology.path(parent.id) if parent else None,
            "modality": rng.choice(modality),
            "concepts": self._concept_phrase(record, rng),
            "site": meta.get("body_site", "").replace("_", " ") or None,
            "age": age if age.isdigit() else None,
            "sex": rng.choice(sex) if sex else None,
        }

    def view(self, name: str, record: Record, rng: random.Random) -> str | None:
        """One sampled text of view ``name`` for ``record``, or ``None`` without the data."""
        if name == "caption":
            return rng.choice(record.texts) if record.texts else None
        values = self.fields(record, rng)
        usable = [
            t for t in self.templates.get(name, ()) if all(values.get(f) for f in _FIELD.findall(t))
        ]
        if not usable:
            return None
        text = rng.choice(usable).format(**{k: v or "" for k, v in values.items()})
        return text[0].upper() + text[1:] if text[:1].islower() and name != "free" else text

    def __call__(self, record: Record, rng: random.Random) -> list[str | None]:
        """One text (or ``None``) per configured view, in order."""
        return [self.view(v, record, rng) for v in self.views]
