"""Naming sparse-autoencoder latents with words from a vocabulary.

A latent's decoder direction lives in the model's image-embedding space; a CLIP-style model puts
text in the same space, so a latent is named by the vocabulary terms whose text embeddings are
most similar to its direction (cosine similarity). The vocabulary (``vocabulary.yaml`` next to
this module, or a user file of the same schema) draws terms from the knowledge files (ontology
conditions, SkinCon and Derm7pt concepts, artifacts) and adds colours and body sites; a user word
list adds an open vocabulary (kind ``user``). Each term is embedded with its kind's prompt
templates (and, for a concept, each of its synonym phrases): the normalised embeddings are
averaged and re-normalised, as for zero-shot class embeddings.

**Centring** (``centre=True``, the default). CLIP's image and text embeddings occupy two separate
narrow cones (the *modality gap*, Liang et al. 2022): every text embedding shares a large common
component, and image-side vectors share another. Raw cosines between an image-side direction and
the terms are then all alike, and dominated by how each vector lines up with the other modality's
common component rather than by meaning: the same "hub" terms win for every latent, and the
latent most aligned with the text cone wins for every term. Following SpLiCE (Bhalla et al. 2024),
each modality is centred on its own mean before the cosine: the mean text embedding over the
vocabulary is subtracted from every term's embedding, and the mean direction over the latents
from every direction (a component shared by all latents says nothing about any one of them); the
vectors are then re-normalised. A side is left as is when it has a single row (its mean would be
itself). Scores are the cosines after centring.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from dermfm.errors import KnowledgeError
from dermfm.knowledge import load_concepts, load_ontology
from dermfm.knowledge.files import read_document, string_list

if TYPE_CHECKING:
    import torch

    from dermfm._inputs import ModelSpec

#: Kind of the terms of a user word list (``extra_words``).
USER_KIND = "user"

_KIND_KEYS = frozenset(
    {"description", "ontology", "concepts", "concept_groups", "terms", "templates"}
)


@dataclass(frozen=True)
class VocabularyEntry:
    """One term a latent can be named with.

    Attributes:
        term: the display name (a condition's or concept's name, or a plain term).
        kind: ``condition``, ``concept``, ``colour``, ``body_site``, ``artifact``, ``user``, or a
            kind of a user vocabulary file.
        source_id: the ontology node id of a condition or the concept id of a concept (artifacts
            keep theirs, e.g. ``ruler``); ``None`` for plain terms and user words.
        phrases: the texts put into the templates (a concept's synonyms; else the term itself).
    """

    term: str
    kind: str
    source_id: str | None
    phrases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "term": self.term,
            "kind": self.kind,
            "source_id": self.source_id,
            "phrases": list(self.phrases),
        }


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of :class:`VocabularyEntry` with the prompt templates of each kind."""

    entries: tuple[VocabularyEntry, ...]
    templates: Mapping[str, tuple[str, ...]] = field(hash=False)
    source: str = ""
    version: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VocabularyEntry]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> VocabularyEntry:
        return self.entries[index]

    @property
    def terms(self) -> list[str]:
        """The terms, in order."""
        return [e.term for e in self.entries]

    @property
    def kinds(self) -> list[str]:
        """The kinds present, in order of first appearance."""
        return list(dict.fromkeys(e.kind for e in self.entries))

    def find(self, key: str) -> int:
        """Position of the entry whose source id equals ``key``, else whose term does
        (case-insensitive).

        Raises:
            KeyError: no entry matches.
        """
        for i, entry in enumerate(self.entries):
            if entry.source_id == key:
                return i
        folded = key.strip().casefold()
        for i, entry in enumerate(self.entries):
            if entry.term.casefold() == folded:
                return i
        raise KeyError(f"no vocabulary term or id '{key}' (vocabulary from {self.source})")


def _packaged_vocabulary() -> Path:
    return Path(str(resources.files("dermfm.interpret") / "vocabulary.yaml"))


def _templates(value: Any, source: Path, where: str) -> tuple[str, ...]:
    templates = string_list(value, source, where)
    if not templates:
        raise KnowledgeError(source, f"{where}: expected a non-empty list of templates")
    for t in templates:
        if "{}" not in t:
            raise KnowledgeError(source, f"{where}: template {t!r} has no '{{}}'")
    return templates


def _kind_entries(
    kind: str, spec: dict[str, Any], claimed: Mapping[str, str], source: Path
) -> list[VocabularyEntry]:
    """The entries of one kind, from the ontology, the concept file and plain terms."""
    where = f"kind '{kind}'"
    entries: list[VocabularyEntry] = []
    ontology = spec.get("ontology")
    if ontology is not None:
        if ontology != "conditions":
            raise KnowledgeError(source, f"{where}: 'ontology' must be 'conditions'")
        entries += [
            VocabularyEntry(n.name, kind, n.id, (n.name,)) for n in load_ontology().conditions()
        ]
    ids = string_list(spec.get("concepts"), source, f"{where}: concepts")
    groups = string_list(spec.get("concept_groups"), source, f"{where}: concept_groups")
    if ids or groups:
        try:
            chosen = load_concepts().select([*ids, *groups])
        except KeyError as exc:
            raise KnowledgeError(source, f"{where}: {exc.args[0]}") from None
        entries += [
            VocabularyEntry(c.name, kind, c.id, c.synonyms)
            for c in chosen
            if claimed.get(c.id, kind) == kind
        ]
    entries += [
        VocabularyEntry(t, kind, None, (t,))
        for t in string_list(spec.get("terms"), source, f"{where}: terms")
    ]
    if not entries:
        raise KnowledgeError(
            source, f"{where}: no terms (give ontology, concepts, concept_groups or terms)"
        )
    return entries


def _user_words(extra_words: Sequence[str] | str | Path) -> list[str]:
    """Words of a list, or of a text file with one term per line (``#`` starts a comment)."""
    if not isinstance(extra_words, str | Path):
        words = list(extra_words)
        if not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError("extra_words must be non-empty strings")
        return [w.strip() for w in words]
    path = Path(extra_words)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KnowledgeError(path, "word list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeError(path, f"cannot read word list ({exc})") from exc
    words = [line.strip() for line in text.splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise KnowledgeError(path, "word list is empty (expected one term per line)")
    return words


def _kind_specs(doc: dict[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """The ``kinds`` mapping of a vocabulary file, each kind checked to be a mapping of known
    fields."""
    specs = doc.get("kinds")
    if not isinstance(specs, dict) or not specs:
        raise KnowledgeError(source, "expected a non-empty mapping under 'kinds'")
    for kind, spec in specs.items():
        if not isinstance(spec, dict):
            raise KnowledgeError(source, f"kind '{kind}': expected a mapping")
        unknown = set(spec) - _KIND_KEYS
        if unknown:
            raise KnowledgeError(
                source,
                f"kind '{kind}': unknown fields {sorted(unknown)} (allowed: {sorted(_KIND_KEYS)})",
            )
    return specs


def _claimed_concepts(specs: Mapping[str, dict[str, Any]], source: Path) -> dict[str, str]:
    """Concept id -> the kind that lists it by id (each id may be listed under one kind only)."""
    claimed: dict[str, str] = {}
    for kind, spec in specs.items():
        for cid in string_list(spec.get("concepts"), source, f"kind '{kind}': concepts"):
            if claimed.setdefault(cid, kind) != kind:
                raise KnowledgeError(
                    source, f"concept '{cid}' is listed under kinds '{claimed[cid]}' and '{kind}'"
                )
    return claimed


def load_vocabulary(
    kinds: Sequence[str] | str | None = None,
    extra_words: Sequence[str] | str | Path | None = None,
    path: str | Path | None = None,
) -> Vocabulary:
    """The naming vocabulary: the chosen kinds of a vocabulary file plus user words.

    Args:
        kinds: kinds to include, in this order (packaged: ``condition``, ``concept``,
            ``colour``, ``body_site``, ``artifact``), or one kind; ``None`` takes every kind of
            the file; ``()`` none (only ``extra_words``).
        extra_words: an open vocabulary of kind ``user``: a list of terms, or the path of a text
            file with one term per line (blank lines and lines starting with ``#`` skipped).
        path: a vocabulary YAML file of the packaged file's schema (default: the packaged one).

    A term occurring twice (case-insensitive) keeps its first occurrence, in kind order with user
    words last: a user word equal to a known term keeps the known entry and its source id.

    Raises:
        KnowledgeError: the vocabulary file or word list is missing or invalid, or names a kind,
            concept or group that does not exist (the message names the file).
        ValueError: ``extra_words`` holds empty or non-string items, or nothing was selected.
    """
    source = Path(path) if path else _packaged_vocabulary()
    doc = read_document(source)
    default_templates = _templates(doc.get("templates"), source, "templates")
    specs = _kind_specs(doc, source)
    claimed = _claimed_concepts(specs, source)
    chosen = list(specs) if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    missing = [k for k in chosen if k not in specs]
    if missing:
        raise KnowledgeError(source, f"no kind {missing} here (have: {list(specs)})")
    entries: list[VocabularyEntry] = []
    templates: dict[str, tuple[str, ...]] = {}
    for kind in chosen:
        spec = specs[kind]
        entries += _kind_entries(kind, spec, claimed, source)
        templates[kind] = (
            _templates(spec["templates"], source, f"kind '{kind}': templates")
            if "templates" in spec
            else default_templates
        )
    if extra_words is not None:
        words = _user_words(extra_words)
        entries += [VocabularyEntry(w, USER_KIND, None, (w,)) for w in words]
        templates[USER_KIND] = default_templates
    unique: dict[str, VocabularyEntry] = {}
    for entry in entries:
        unique.setdefault(entry.term.casefold(), entry)
    if not unique:
        raise ValueError("the vocabulary is empty: choose at least one kind or give extra_words")
    kept = tuple(unique.values())
    present = {e.kind for e in kept}
    return Vocabulary(
        entries=kept,
        templates={k: t for k, t in templates.items() if k in present},
        source=str(source),
        version=str(doc.get("version", "")),
    )


def text_embeddings(model: ModelSpec, vocabulary: Vocabulary) -> torch.Tensor:
    """``(len(vocabulary), embed_dim)`` L2-normalised text embeddings of the terms.

    Each kind is embedded once with its templates through
    :func:`dermfm.zeroshot.class_text_embeddings` (prompt ensemble, content-keyed cache); an
    entry with several phrases (a concept's synonyms) gets the re-normalised mean of its
    phrases' embeddings.
    """
    import torch

    from dermfm.zeroshot import class_text_embeddings

    rows: dict[int, torch.Tensor] = {}
    for kind in vocabulary.kinds:
        members = [i for i, e in enumerate(vocabulary) if e.kind == kind]
        phrases = list(dict.fromkeys(p for i in members for p in vocabulary[i].phrases))
        embedded = class_text_embeddings(model, phrases, vocabulary.templates[kind])
        position = {p: j for j, p in enumerate(phrases)}
        for i in members:
            rows[i] = embedded[[position[p] for p in vocabulary[i].phrases]].mean(dim=0)
    stacked = torch.stack([rows[i] for i in range(len(vocabulary))])
    return torch.nn.functional.normalize(stacked, dim=-1)


def _unit_rows(x: NDArray[np.float64], centre: bool) -> NDArray[np.float64]:
    if centre and x.shape[0] > 1:
        x = x - x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _prepared(
    directions: Any, text_emb: Any, centre: bool, n_terms: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit-norm (optionally centred) directions and term embeddings, after checking shapes."""
    from dermfm.evaluate.retrieval import as_matrix

    d = as_matrix(directions, "directions", np.float64)
    t = as_matrix(text_emb, "text_emb", np.float64)
    if d.shape[1] != t.shape[1]:
        raise ValueError(
            f"directions have {d.shape[1]} dimensions but text_emb has {t.shape[1]}: "
            "they must come from the same model"
        )
    if n_terms is not None and t.shape[0] != n_terms:
        raise ValueError(f"text_emb has {t.shape[0]} rows but the vocabulary has {n_terms} terms")
    return _unit_rows(d, centre), _unit_rows(t, centre)


def similarity_matrix(
    directions: Any, text_emb: Any, *, centre: bool = True
) -> NDArray[np.float64]:
    """``(n_latents, n_terms)`` cosine similarities of latent directions and term embeddings.

    Args:
        directions: ``(n_latents, d)`` decoder directions (array or tensor).
        text_emb: ``(n_terms, d)`` term embeddings (:func:`text_embeddings`).
        centre: centre both sides on their own means first (see the module docstring).
    """
    d, t = _prepared(directions, text_emb, centre)
    return d @ t.T


@dataclass(frozen=True)
class NameScore:
    """A vocabulary term and its similarity to a latent's direction."""

    term: str
    kind: str
    source_id: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "term": self.term,
            "kind": self.kind,
            "source_id": self.source_id,
            "score": self.score,
        }


@dataclass(frozen=True)
class LatentNames:
    """The best names of one latent.

    Attributes:
        latent: the latent's index.
        names: the top terms, best first.
        margin: the best term's score minus the second best term's (over the whole vocabulary):
            how clearly the best name stands out.
    """

    latent: int
    names: tuple[NameScore, ...]
    margin: float

    @property
    def best(self) -> NameScore:
        """The best name."""
        return self.names[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {
            "latent": self.latent,
            "names": [n.to_dict() for n in self.names],
            "margin": self.margin,
        }


def name_latents(
    directions: Any,
    text_emb: Any,
    vocabulary: Vocabulary,
    *,
    top: int = 5,
    centre: bool = True,
) -> list[LatentNames]:
    """The ``top`` vocabulary terms of every latent, by cosine similarity to its direction.

    Args:
        directions: ``(n_latents, d)`` decoder directions in the embedding space.
        text_emb: ``(len(vocabulary), d)`` embeddings of the terms (:func:`text_embeddings`).
        vocabulary: the terms, in the rows' order.
        top: names kept per latent.
        centre: remove each modality's mean first (see the module docstring).

    Returns:
        One :class:`LatentNames` per latent, in latent order.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if len(vocabulary) < 2:
        raise ValueError("naming needs a vocabulary of at least two terms")
    d, t = _prepared(directions, text_emb, centre, len(vocabulary))
    scores = d @ t.T
    results = []
    for latent, row in enumerate(scores):
        order = np.argsort(-row, kind="stable")
        names = tuple(
            NameScore(
                vocabulary[j].term, vocabulary[j].kind, vocabulary[j].source_id, float(row[j])
            )
            for j in order[:top]
        )
        results.append(LatentNames(latent, names, float(row[order[0]] - row[order[1]])))
    return results


def best_latents_for(
    key: str,
    directions: Any,
    text_emb: Any,
    vocabulary: Vocabulary,
    *,
    top: int = 10,
    centre: bool = True,
) -> list[tuple[int, float]]:
    """The ``top`` latents whose directions are most similar to one term, best first.

    Args:
        key: a term or a source id (e.g. the artifact concept id ``ruler``); see
            :meth:`Vocabulary.find`.
        directions, text_emb, vocabulary, centre: as for :func:`name_latents` (the centring uses
            the whole vocabulary, so scores match the names' scores).
        top: latents returned.

    Returns:
        ``(latent, score)`` pairs sorted by decreasing score.

    Raises:
        KeyError: ``key`` is not in the vocabulary.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    index = vocabulary.find(key)
    d, t = _prepared(directions, text_emb, centre, len(vocabulary))
    scores = d @ t[index]
    order = np.argsort(-scores, kind="stable")[:top]
    return [(int(i), float(scores[i])) for i in order]


def write_names_table(
    names: Sequence[LatentNames],
    path: str | Path,
    *,
    frequencies: Sequence[float] | NDArray[np.float64] | None = None,
) -> tuple[Path, Path]:
    """Write every latent's names as ``<path>.csv`` and ``<path>.md``.

    Args:
        names: :func:`name_latents` output.
        path: the output path; its suffix (if any) is replaced by ``.csv`` and ``.md``.
        frequencies: optional firing frequency of each latent, indexed by latent id
            (:func:`dermfm.interpret.gallery.firing_frequency`), added as a column.

    Returns:
        The CSV and Markdown paths.

    The CSV has one row per latent: ``latent``, ``frequency`` (when given), ``margin``, then
    ``name_r``, ``kind_r``, ``score_r`` for each rank ``r``; the Markdown table lists the names
    with their kinds and scores in one cell.
    """
    from dermfm.cache import atomic_write_bytes
    from dermfm.evaluate.report import Block, render_markdown

    if not names:
        raise ValueError("no latent names to write")
    ranks = max(len(n.names) for n in names)
    freq = None if frequencies is None else np.asarray(frequencies, dtype=np.float64)
    if freq is not None and freq.shape[0] <= max(n.latent for n in names):
        raise ValueError(f"frequencies has {freq.shape[0]} values, fewer than the latents named")
    header = ["latent", *(["frequency"] if freq is not None else []), "margin"]
    for r in range(1, ranks + 1):
        header += [f"name_{r}", f"kind_{r}", f"score_{r}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    md_rows = [
        ("latent", *(["fires on"] if freq is not None else []), "names (kind, score)", "margin")
    ]
    for n in names:
        fired = [f"{freq[n.latent]:.4f}"] if freq is not None else []
        cells = [str(n.latent), *fired, f"{n.margin:.4f}"]
        for s in n.names:
            cells += [s.term, s.kind, f"{s.score:.4f}"]
        writer.writerow(cells + [""] * (len(header) - len(cells)))
        shown = [f"{freq[n.latent]:.2%}"] if freq is not None else []
        listed = "; ".join(f"{s.term} ({s.kind}, {s.score:.3f})" for s in n.names)
        md_rows.append((str(n.latent), *shown, listed, f"{n.margin:.3f}"))
    base = Path(path)
    csv_path, md_path = base.with_suffix(".csv"), base.with_suffix(".md")
    atomic_write_bytes(csv_path, buffer.getvalue().encode("utf-8"))
    markdown = render_markdown(
        [Block("heading", "Latent names", 1), Block("table", rows=tuple(md_rows))]
    )
    atomic_write_bytes(md_path, markdown.encode("utf-8"))
    return csv_path, md_path
