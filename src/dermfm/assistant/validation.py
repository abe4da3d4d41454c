"""Checks on what a writer wrote: the schema, no diagnosis outside the differential, no doses,
no certainty claims.

A condition is *named* when any ontology name or synonym occurs as a whole word (longest match
first, case-insensitive; all-capital abbreviations such as ``BCC`` only in capitals). It is
*supported* when it is a candidate of the differential (or the image-only differential), an
ancestor category of one, a category the differential scored, or a term the findings already
contain outside the differential and the similar cases (the patient details, the rules' reasons,
the knowledge-base text, the concept names; not the question or free notes). Without a
differential (the photo needs to be retaken) nothing else is supported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from dermfm.errors import KnowledgeError
from dermfm.knowledge import Ontology, load_ontology
from dermfm.knowledge.files import read_document, require, string_list

#: The packaged file with the writers' texts, the LLM prompt and the validation patterns.
CONFIG_FILE = Path(str(resources.files("dermfm.assistant") / "writers.yaml"))

ViolationKind = Literal["schema", "unsupported_diagnosis", "dosage", "certainty", "empty"]

#: Patient details the user types as free text (the rest are numbers or fixed vocabulary).
USER_TEXT_FIELDS = ("site", "duration", "notes")

#: Keys of the findings whose texts do not make a condition supported: the differential is
#: checked apart, similar cases are other patients' diagnoses, and a question or a free note
#: naming a condition is not a finding about it.
_UNGROUNDED_KEYS = frozenset({"differential", "similar_cases", "question", "notes"})


@dataclass(frozen=True)
class Violation:
    """One reason a writer's output cannot be shown; ``detail`` is a readable phrase."""

    kind: ViolationKind
    detail: str

    def __str__(self) -> str:
        return self.detail


@lru_cache(maxsize=1)
def writers_config() -> dict[str, Any]:
    """The parsed ``writers.yaml`` (texts, intents, LLM prompt, validation patterns)."""
    data = read_document(CONFIG_FILE)
    for key in ("template", "intents", "llm", "validation"):
        require(data, key, CONFIG_FILE, "top level")
    return data


def _compile(pattern: str, where: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise KnowledgeError(CONFIG_FILE, f"{where}: invalid regular expression ({exc})") from exc


def _alternation(terms: list[str]) -> str:
    """A regex alternative of ``terms``, longest first; all-capital abbreviations match only
    in capitals, everything else case-insensitively."""
    parts = []
    for term in sorted(terms, key=lambda t: (-len(t), t)):
        escaped = re.escape(term)
        parts.append(escaped if term.isupper() else f"(?i:{escaped})")
    return "(?:" + "|".join(parts) + ")"


def _word(alternation: str) -> str:
    """``alternation`` as a whole word (hyphens join words), with an optional plural ending."""
    return rf"(?<![\w-])(?P<term>{alternation})(?i:e?s)?(?![\w-])"


@dataclass(frozen=True)
class _Vocabulary:
    ontology: Ontology
    names: re.Pattern[str]
    nodes: dict[str, frozenset[str]]
    dosage: tuple[re.Pattern[str], ...]
    certainty: tuple[re.Pattern[str], ...]

    def node_ids(self, term: str) -> frozenset[str]:
        """The ontology nodes a matched term names."""
        return self.nodes.get(term.casefold(), frozenset())


@lru_cache(maxsize=4)
def _vocabulary(ontology: Ontology) -> _Vocabulary:
    rules = writers_config()["validation"]
    ignored = {
        t.casefold()
        for t in string_list(rules.get("ignore_terms"), CONFIG_FILE, "validation.ignore_terms")
    }
    nodes: dict[str, set[str]] = {}
    for node in ontology:
        for text in (node.name, *node.synonyms):
            if text.casefold() not in ignored:
                nodes.setdefault(text.casefold(), set()).add(node.id)
    terms = sorted({t for n in ontology for t in (n.name, *n.synonyms) if t.casefold() in nodes})
    root = ontology.root.id
    non_root = [t for t in terms if nodes[t.casefold()] != {root}]
    condition = _alternation(non_root) + r"(?i:e?s)?(?![\w-])"
    dosage = tuple(
        _compile(p, f"validation.dosage_patterns[{i}]")
        for i, p in enumerate(
            string_list(
                require(rules, "dosage_patterns", CONFIG_FILE, "validation"),
                CONFIG_FILE,
                "validation.dosage_patterns",
            )
        )
    )
    certainty = tuple(
        _compile(p.replace("{condition}", condition), f"validation.certainty_patterns[{i}]")
        for i, p in enumerate(
            string_list(
                require(rules, "certainty_patterns", CONFIG_FILE, "validation"),
                CONFIG_FILE,
                "validation.certainty_patterns",
            )
        )
    )
    return _Vocabulary(
        ontology=ontology,
        names=re.compile(_word(_alternation(terms))),
        nodes={k: frozenset(v) for k, v in nodes.items()},
        dosage=dosage,
        certainty=certainty,
    )


def _grounding(value: Any) -> Iterator[str]:
    """The texts of the findings that may make a condition supported (identifiers such as
    ``personal_melanoma`` read as words)."""
    if isinstance(value, str):
        yield value.replace("_", " ")
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _UNGROUNDED_KEYS:
                yield from _grounding(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _grounding(item)


def _supported(findings: dict[str, Any], vocab: _Vocabulary) -> tuple[set[str], set[str]]:
    """The node ids and the (casefolded) texts a writer may name for these findings."""
    ontology = vocab.ontology
    nodes = {ontology.root.id}
    texts: set[str] = set()
    differential = findings.get("differential") or {}
    for candidate in [*differential.get("candidates", []), *(differential.get("image_only") or [])]:
        names = [candidate.get(k) for k in ("name", "label") if candidate.get(k)]
        texts.update(n.casefold() for n in names)
        node = candidate.get("node")
        found = (
            ontology[node]
            if node in ontology
            else next((n for n in map(ontology.lookup, names) if n is not None), None)
        )
        if found is not None:
            nodes.update(a.id for a in ontology.ancestors(found.id))
    nodes.update(c["node"] for c in differential.get("categories", []) if c.get("node"))
    prediction_set = differential.get("prediction_set") or {}
    for label, name in zip(
        prediction_set.get("labels", []), prediction_set.get("names", []), strict=False
    ):
        texts.add(name.casefold())
        if label in ontology:
            nodes.update(a.id for a in ontology.ancestors(label))
    for text in _grounding(findings):
        for match in vocab.names.finditer(text):
            nodes.update(vocab.node_ids(match["term"]))
    return nodes, texts


def unsupported_diagnoses(text: str, findings: dict[str, Any]) -> list[str]:
    """The condition names in ``text`` that the findings do not support (in order, once each)."""
    vocab = _vocabulary(load_ontology())
    nodes, texts = _supported(findings, vocab)
    out: list[str] = []
    for match in vocab.names.finditer(text):
        term = match["term"]
        if term.casefold() in texts or vocab.node_ids(term) & nodes:
            continue
        if match[0] not in out:
            out.append(match[0])
    return out


def user_texts(findings: dict[str, Any]) -> tuple[str, ...]:
    """The patient details of ``findings`` that the user typed as free text (the
    :data:`USER_TEXT_FIELDS`), longest first."""
    patient = findings.get("patient") or {}
    values: list[Any] = []
    for name in USER_TEXT_FIELDS:
        value = patient.get(name)
        values += value if isinstance(value, list) else [value]
    texts = {v for v in values if isinstance(v, str) and v.strip()}
    return tuple(sorted(texts, key=lambda t: (-len(t), t)))


def validate_output(
    output: Any,
    findings: dict[str, Any],
    *,
    question: str | None = None,
    quoted: Sequence[str] = (),
) -> list[Violation]:
    """Everything wrong with a writer's ``output`` for these ``findings`` (empty when none).

    ``output`` must be a mapping with a non-empty string ``summary`` and an ``answer`` that is a
    string or ``None``; when a ``question`` was asked the answer must be non-empty.

    ``quoted``: texts the writer is known to copy verbatim from the user (the template writer
    quotes :func:`user_texts`). They are the user's words, not the writer's claims, so they are
    left out before the text is checked: markup, a dose or a certainty word typed as a body site
    is no violation of the writer's.
    """
    if not isinstance(output, dict):
        return [Violation("schema", f"schema: expected a JSON object, got {type(output).__name__}")]
    violations: list[Violation] = []
    summary, answer = output.get("summary"), output.get("answer")
    if not isinstance(summary, str):
        violations.append(Violation("schema", "schema: 'summary' must be a string"))
    elif not summary.strip():
        violations.append(Violation("empty", "empty summary"))
    if answer is not None and not isinstance(answer, str):
        violations.append(Violation("schema", "schema: 'answer' must be a string or null"))
    elif question is not None and not (answer or "").strip():
        violations.append(Violation("empty", "no answer to the question"))
    text = "\n".join(t for t in (summary, answer) if isinstance(t, str))
    for words in sorted(set(quoted), key=len, reverse=True):
        if words.strip():
            text = text.replace(words, " ")
    # a weak model may copy the reply format of the prompt ("<a short summary ...>")
    violations += [
        Violation("schema", f"schema: placeholder copied from the prompt '{m[0][:40]}'")
        for m in re.finditer(r"<[A-Za-z][^<>\n]{2,}>", text)
    ]
    vocab = _vocabulary(load_ontology())
    violations += [
        Violation("unsupported_diagnosis", f"unsupported diagnosis '{name}'")
        for name in unsupported_diagnoses(text, findings)
    ]
    for kind, patterns, label in (
        ("dosage", vocab.dosage, "dose"),
        ("certainty", vocab.certainty, "certainty claim"),
    ):
        for pattern in patterns:
            violations += [
                Violation(kind, f"{label} '{m[0].strip()}'") for m in pattern.finditer(text)
            ]
    return violations


__all__ = [
    "CONFIG_FILE",
    "USER_TEXT_FIELDS",
    "Violation",
    "ViolationKind",
    "unsupported_diagnoses",
    "user_texts",
    "validate_output",
    "writers_config",
]
