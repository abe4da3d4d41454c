"""Patient details from what the user says: age, sex, body site, duration, symptoms, change over
time, history, skin type and modality, as a :class:`~dermfm.assistant.report.PatientDetails`.

Extraction is deterministic (regular expressions over English text, case-insensitive): every
vocabulary and pattern is in ``patient_terms.yaml`` next to this module, which also explains how
text is read (sentences, clauses, negation and uncertainty cues). Body sites are reported as
HAM10000 ``localization`` values (``back``, ``upper extremity``, ``face``...) so that they can go
into the model's prompts the way its training captions did ("a lesion on the {site}").
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dermfm.assistant.report import PatientDetails
from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import read_document, require, string_list

#: Fields that take one value; the first mention in a message sets it.
_SINGLE = ("age", "sex", "site", "duration", "itch", "pain", "bleeding", "skin_type", "modality")
#: Fields that hold a list of tokens; a mention adds its token, a negated one removes it.
_LISTS = ("evolution", "history")
#: The pseudo-field of "no change reported" terms (see ``evolution.unchanged`` in the YAML).
_UNCHANGED = "unchanged"
#: Apostrophes are removed before matching (the YAML's patterns are written without them).
_APOSTROPHES = str.maketrans("", "", "'\u2019\u2018`")


@dataclass(frozen=True)
class _Term:
    """A vocabulary term: a mention sets ``field`` to ``value`` (``polarity`` False: says the
    opposite, e.g. "painless"); ``needs_cue``: a site word that needs a place word before it."""

    field: str
    value: str | bool | None
    polarity: bool
    pattern: re.Pattern[str]
    needs_cue: bool = False


@dataclass(frozen=True)
class _Vocabulary:
    """``patient_terms.yaml``, checked and compiled."""

    sites: tuple[str, ...]
    terms: tuple[_Term, ...]
    site_cue: re.Pattern[str]
    site_part_of: re.Pattern[str]
    age: tuple[re.Pattern[str], ...]
    max_age: int
    sex: tuple[tuple[str, re.Pattern[str]], ...]
    duration: re.Pattern[str]
    amounts: dict[str, int | str]
    units: tuple[tuple[str, re.Pattern[str]], ...]
    duration_phrases: tuple[tuple[str | None, re.Pattern[str]], ...]
    skin_type: tuple[re.Pattern[str], ...]
    skin_types: dict[str, str]
    negation: re.Pattern[str]
    negation_after: re.Pattern[str]
    uncertain: re.Pattern[str]
    window: int
    sentence_split: re.Pattern[str]
    clause_split: re.Pattern[str]
    question_start: re.Pattern[str]
    question_fields: frozenset[str]
    filler: re.Pattern[str]
    unchanged_note: str
    unchanged_clears: tuple[str, ...]


@dataclass(frozen=True)
class _Fact:
    """One thing said: ``field`` gets ``value``; for list fields ``value`` is the token and
    ``add`` says whether it is added or removed."""

    field: str
    value: Any
    add: bool = True


def _file() -> Path:
    return Path(str(resources.files("dermfm.assistant") / "patient_terms.yaml"))


def _compile(pattern: str, source: Path, where: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise KnowledgeError(source, f"{where}: invalid regular expression ({exc})") from exc


def _alternation(fragments: tuple[str, ...]) -> str:
    """Regex fragments as one group, longest first so that "a few" is tried before "a"."""
    return "(?:" + "|".join(sorted(fragments, key=len, reverse=True)) + ")"


def _word(fragment: str) -> str:
    """A fragment matched as a whole word, not inside a longer or hyphenated word."""
    return rf"(?<![\w-])(?:{fragment})(?![\w-])"


def _section(data: dict[str, Any], key: str, source: Path, where: str = "") -> dict[str, Any]:
    value = require(data, key, source, where or "top level")
    if not isinstance(value, dict):
        raise KnowledgeError(source, f"{where + '.' if where else ''}{key}: expected a mapping")
    return value


def _patterns(section: dict[str, Any], key: str, source: Path, where: str) -> tuple[str, ...]:
    return string_list(require(section, key, source, where), source, f"{where}.{key}")


def _word_terms(
    field: str,
    value: str | bool | None,
    polarity: bool,
    fragments: tuple[str, ...],
    source: Path,
    where: str,
    needs_cue: bool = False,
) -> list[_Term]:
    return [
        _Term(field, value, polarity, _compile(_word(f), source, f"{where}: {f!r}"), needs_cue)
        for f in fragments
    ]


def _token_terms(field: str, entries: dict[str, Any], source: Path, where: str) -> list[_Term]:
    """Terms of a ``{token: [fragments]}`` mapping (evolution tokens, history, modality)."""
    terms: list[_Term] = []
    for token, fragments in entries.items():
        listed = string_list(fragments, source, f"{where}.{token}")
        if not listed:
            raise KnowledgeError(source, f"{where}.{token}: expected at least one term")
        terms += _word_terms(field, str(token), True, listed, source, f"{where}.{token}")
    return terms


def _parse(data: dict[str, Any], source: Path) -> _Vocabulary:
    text = _section(data, "text", source)
    negation = _section(data, "negation", source)
    age = _section(data, "age", source)
    sex = _section(data, "sex", source)
    duration = _section(data, "duration", source)
    skin = _section(data, "skin_type", source)
    modality = _section(data, "modality", source)
    symptoms = _section(data, "symptoms", source)
    evolution = _section(data, "evolution", source)
    history = _section(data, "history", source)
    sites = _section(data, "sites", source)

    # body sites
    vocabulary = _section(sites, "vocabulary", source, "sites")
    ambiguous = sites.get("ambiguous") or {}
    if not isinstance(ambiguous, dict):
        raise KnowledgeError(source, "sites.ambiguous: expected a mapping")
    unknown = set(ambiguous) - set(vocabulary)
    if unknown:
        raise KnowledgeError(
            source, f"sites.ambiguous: {sorted(unknown)} are not sites of sites.vocabulary"
        )
    terms = _token_terms("site", vocabulary, source, "sites.vocabulary")
    for site, fragments in ambiguous.items():
        listed = string_list(fragments, source, f"sites.ambiguous.{site}")
        terms += _word_terms("site", site, True, listed, source, f"sites.ambiguous.{site}", True)
    ignore = string_list(sites.get("ignore"), source, "sites.ignore")
    terms += _word_terms("site", None, True, ignore, source, "sites.ignore")

    # symptoms (true/false)
    for field in ("itch", "pain", "bleeding"):
        entry = _section(symptoms, field, source, "symptoms")
        for key, polarity in (("present", True), ("absent", False)):
            listed = string_list(entry.get(key), source, f"symptoms.{field}.{key}")
            terms += _word_terms(
                field, polarity, polarity, listed, source, f"symptoms.{field}.{key}"
            )

    # change over time
    tokens = _section(evolution, "tokens", source, "evolution")
    terms += _token_terms("evolution", tokens, source, "evolution.tokens")
    unchanged = _section(evolution, "unchanged", source, "evolution")
    clears = string_list(unchanged.get("clears"), source, "evolution.unchanged.clears")
    if set(clears) - set(tokens):
        raise KnowledgeError(
            source,
            f"evolution.unchanged.clears: {sorted(set(clears) - set(tokens))} are not "
            "tokens of evolution.tokens",
        )
    for key, polarity in (("present", True), ("negated", False)):
        listed = string_list(unchanged.get(key), source, f"evolution.unchanged.{key}")
        terms += _word_terms(
            _UNCHANGED, True, polarity, listed, source, f"evolution.unchanged.{key}"
        )

    terms += _token_terms("history", history, source, "history")
    unknown_modality = set(modality) - {"dermoscopy", "clinical"}
    if unknown_modality:
        raise KnowledgeError(
            source,
            f"modality: {sorted(unknown_modality)} are not modalities (dermoscopy, clinical)",
        )
    terms += _token_terms("modality", modality, source, "modality")

    # sex: pattern templates filled with each value's words
    sex_patterns = _patterns(sex, "patterns", source, "sex")
    sex_values = _section(sex, "values", source, "sex")
    if set(sex_values) - {"female", "male"}:
        raise KnowledgeError(source, "sex.values: expected only 'female' and 'male'")
    lesion = _alternation(_patterns(sex, "lesion", source, "sex"))
    compiled_sex: list[tuple[str, re.Pattern[str]]] = []
    for value, words in sex_values.items():
        where = f"sex.values.{value}"
        fills = {
            "{person}": _alternation(_patterns(words, "person", source, where)),
            "{relative}": _alternation(_patterns(words, "relative", source, where)),
            "{letter}": str(require(words, "letter", source, where)),
            "{lesion}": lesion,
        }
        for i, template in enumerate(sex_patterns):
            pattern = template
            for slot, fill in fills.items():
                pattern = pattern.replace(slot, fill)
            compiled_sex.append((value, _compile(pattern, source, f"sex.patterns[{i}]")))

    # duration
    amounts = _section(duration, "amounts", source, "duration")
    units = _section(duration, "units", source, "duration")
    duration_pattern = (
        str(require(duration, "pattern", source, "duration"))
        .replace("{amount}", _alternation((r"\d+(?:\.\d+)?", *map(re.escape, amounts))))
        .replace("{unit}", _alternation(tuple(map(str, units.values()))))
    )
    phrases: list[tuple[str | None, re.Pattern[str]]] = [
        (
            None,
            _compile(str(require(duration, "since", source, "duration")), source, "duration.since"),
        )
    ]
    for short, fragments in _section(duration, "phrases", source, "duration").items():
        for fragment in string_list(fragments, source, f"duration.phrases.{short}"):
            phrases.append(
                (str(short), _compile(_word(fragment), source, f"duration.phrases.{short}"))
            )

    skin_values = _section(skin, "values", source, "skin_type")
    max_age = require(age, "max", source, "age")
    window = require(negation, "window", source, "negation")
    for name, number in (("age.max", max_age), ("negation.window", window)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise KnowledgeError(source, f"{name}: expected a positive whole number")

    def joined(section: dict[str, Any], key: str, where: str) -> re.Pattern[str]:
        return _compile(
            r"\b" + _alternation(_patterns(section, key, source, where)) + r"\b",
            source,
            f"{where}.{key}",
        )

    def one(section: dict[str, Any], key: str, where: str, flags: int = 0) -> re.Pattern[str]:
        return _compile(str(require(section, key, source, where)), source, f"{where}.{key}", flags)

    return _Vocabulary(
        sites=tuple(map(str, vocabulary)),
        terms=tuple(terms),
        site_cue=one(sites, "cue", "sites"),
        site_part_of=one(sites, "part_of", "sites"),
        age=tuple(
            _compile(p, source, "age.patterns") for p in _patterns(age, "patterns", source, "age")
        ),
        max_age=max_age,
        sex=tuple(compiled_sex),
        duration=_compile(duration_pattern, source, "duration.pattern"),
        amounts={str(k): v for k, v in amounts.items()},
        units=tuple(
            (str(unit), _compile(f"^(?:{p})$", source, f"duration.units.{unit}"))
            for unit, p in units.items()
        ),
        duration_phrases=tuple(phrases),
        skin_type=tuple(
            _compile(p, source, "skin_type.patterns")
            for p in _patterns(skin, "patterns", source, "skin_type")
        ),
        skin_types={str(k).lower(): str(v) for k, v in skin_values.items()},
        negation=joined(negation, "before", "negation"),
        negation_after=one(negation, "after", "negation"),
        uncertain=joined(negation, "uncertain", "negation"),
        window=window,
        sentence_split=one(text, "sentence_split", "text", re.IGNORECASE),
        clause_split=one(text, "clause_split", "text"),
        question_start=one(text, "question_start", "text"),
        question_fields=frozenset(
            string_list(text.get("question_fields"), source, "text.question_fields")
        ),
        filler=one(text, "filler", "text"),
        unchanged_note=str(require(unchanged, "note", source, "evolution.unchanged")),
        unchanged_clears=clears,
    )


@functools.lru_cache(maxsize=1)
def _vocabulary() -> _Vocabulary:
    source = _file()
    return _parse(read_document(source), source)


def canonical_sites() -> list[str]:
    """The canonical body sites (HAM10000 ``localization`` values) that details use."""
    return list(_vocabulary().sites)


# ----------------------------------------------------------------------------- reading text


def _normalise(text: str) -> str:
    return text.translate(_APOSTROPHES).lower()


def _clauses(low: str, split: re.Pattern[str]) -> list[tuple[int, int]]:
    """The non-empty clauses of a (normalised) sentence as ``(start, end)`` spans."""
    spans, start = [], 0
    for m in split.finditer(low):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(low)))
    return [(a, b) for a, b in spans if low[a:b].strip()]


def _is_question(low: str, voc: _Vocabulary) -> bool:
    stripped = low.strip()
    return stripped.endswith("?") or bool(voc.question_start.match(stripped))


def _first(candidates: Iterator[tuple[int, Any]]) -> tuple[int, Any] | None:
    return min(candidates, key=lambda c: c[0], default=None)


def _ages(low: str, voc: _Vocabulary) -> list[tuple[int, int, int]]:
    """``(start, end, years)`` of every age statement, plausible or not, in text order."""
    return sorted(
        (m.start(), m.end(), int(m["age"])) for pattern in voc.age for m in pattern.finditer(low)
    )


def _durations(low: str, voc: _Vocabulary) -> list[tuple[int, str]]:
    """``(start, short form)`` of every duration ("3 weeks", "since last year"), in text order."""

    def amounts() -> Iterator[tuple[int, str]]:
        for m in voc.duration.finditer(low):
            unit = next(u for u, p in voc.units if p.match(m["unit"]))
            raw = " ".join(m["amount"].split())
            value = voc.amounts.get(raw, raw)
            try:
                number = float(value)
            except ValueError:  # a phrase kept as said: "a few days"
                yield m.start(), f"{value} {unit}s"
                continue
            yield m.start(), f"{number:g} {unit}{'' if number == 1 else 's'}"

    def phrases() -> Iterator[tuple[int, str]]:
        for short, pattern in voc.duration_phrases:
            for m in pattern.finditer(low):
                yield m.start(), short or " ".join(m.group().split())

    return sorted((*amounts(), *phrases()), key=lambda c: c[0])


def _skin_type(low: str, voc: _Vocabulary) -> tuple[int, str] | None:
    return _first(
        (m.start(), voc.skin_types[m["value"]]) for p in voc.skin_type for m in p.finditer(low)
    )


def _sex(low: str, voc: _Vocabulary) -> tuple[int, str] | None:
    return _first((m.start(), value) for value, p in voc.sex for m in p.finditer(low))


def _term_matches(
    low: str, voc: _Vocabulary, fields: frozenset[str] | None = None
) -> list[tuple[int, int, _Term]]:
    """Vocabulary matches in text order; of overlapping matches of one field the first (then
    the longest) is kept."""
    found = sorted(
        (
            (m.start(), m.end(), t)
            for t in voc.terms
            if fields is None or t.field in fields
            for m in t.pattern.finditer(low)
        ),
        key=lambda f: (f[0], f[0] - f[1]),
    )
    kept, reach = [], {}
    for start, end, term in found:
        if start >= reach.get(term.field, 0):
            kept.append((start, end, term))
            reach[term.field] = end
    return kept


def _site_usable(
    low: str, start: int, end: int, term: _Term, voc: _Vocabulary, need_cue: bool
) -> bool:
    """Whether a site match names the site: not the first part of "back of my hand", and an
    ambiguous word only after a place word ("on my back") or on its own ("Back.")."""
    if term.value is None or voc.site_part_of.match(low[end:]):
        return False
    if not (need_cue and term.needs_cue):
        return True
    alone = not low[:start].strip() and not low[end:].strip(" .!,")
    return alone or bool(voc.site_cue.search(low[:start]))


def _sentence_facts(low: str, voc: _Vocabulary) -> list[tuple[int, _Fact]]:
    """The facts stated in one normalised sentence, with their positions."""
    clauses = _clauses(low, voc.clause_split)
    starts = [a for a, _ in clauses]
    asks = low.strip().endswith("?")

    def clause_of(pos: int) -> tuple[int, bool]:
        """Start of the clause holding ``pos`` and whether that clause is a question."""
        i = max(bisect.bisect_right(starts, pos) - 1, 0)
        begin = clauses[i][0] if clauses else 0
        question = asks and (
            len(clauses) == 1 or bool(voc.question_start.match(low[begin:].lstrip()))
        )
        return begin, question

    def allowed(field: str, pos: int) -> bool:
        return field in voc.question_fields or not clause_of(pos)[1]

    facts: list[tuple[int, _Fact]] = []
    masked = low
    ages = _ages(low, voc)
    for a, b, _ in ages:  # "54 years old" (or "150 years old") is no duration
        masked = masked[:a] + " " * (b - a) + masked[b:]
    plausible = [(a, years) for a, _, years in ages if years <= voc.max_age]
    if plausible:
        facts.append((plausible[0][0], _Fact("age", plausible[0][1])))
    matches = _term_matches(low, voc)
    # a time in a clause about history ("a melanoma removed 5 years ago") is not the lesion's
    history = {clause_of(start)[0] for start, _, term in matches if term.field == "history"}
    duration = next((d for d in _durations(masked, voc) if clause_of(d[0])[0] not in history), None)
    for field, found in (
        ("sex", _sex(low, voc)),
        ("duration", duration),
        ("skin_type", _skin_type(low, voc)),
    ):
        if found:
            facts.append((found[0], _Fact(field, found[1])))
    facts = [(pos, fact) for pos, fact in facts if allowed(fact.field, pos)]

    for start, end, term in matches:
        if not allowed(term.field, start):
            continue
        if term.field == "site" and not _site_usable(low, start, end, term, voc, True):
            continue
        begin = clause_of(start)[0]
        before = " ".join(low[begin:start].split()[-voc.window :])
        if voc.uncertain.search(before):
            continue
        negated = bool(voc.negation.search(before) or voc.negation_after.match(low[end:]))
        asserted = term.polarity != negated
        if term.field in _LISTS:
            facts.append((start, _Fact(term.field, term.value, asserted)))
        elif term.field in ("itch", "pain", "bleeding"):
            facts.append((start, _Fact(term.field, asserted)))
        elif asserted:  # site, modality, "no change": a negated mention says nothing
            facts.append((start, _Fact(term.field, term.value)))
    return sorted(facts, key=lambda f: f[0])


def _apply(data: dict[str, Any], fact: _Fact, seen: set[str], voc: _Vocabulary) -> None:
    if fact.field in _SINGLE:
        if fact.field not in seen:
            data[fact.field] = fact.value
            seen.add(fact.field)
    elif fact.field == _UNCHANGED:
        data["evolution"] = [e for e in data["evolution"] if e not in voc.unchanged_clears]
        if voc.unchanged_note not in data["notes"]:
            data["notes"].append(voc.unchanged_note)
    elif fact.add:
        if fact.value not in data[fact.field]:
            data[fact.field].append(fact.value)
    else:
        data[fact.field] = [v for v in data[fact.field] if v != fact.value]


def _changed(old: PatientDetails, new: PatientDetails) -> list[str]:
    return [
        name for name in PatientDetails.model_fields if getattr(old, name) != getattr(new, name)
    ]


def parse_details(
    text: str, previous: PatientDetails | None = None
) -> tuple[PatientDetails, list[str]]:
    """Read patient details from what the user said and merge them into ``previous``.

    English, case-insensitive and deterministic: age ("54-year-old", "I'm 54"; above the
    plausible maximum ignored), sex (only when clearly about the patient), body site (mapped to
    a HAM10000 ``localization`` value), duration ("3 weeks", "since last year"), itch, pain and
    bleeding (with negation: "doesn't itch"), change over time and relevant history (tokens
    from ``patient_terms.yaml``; a negated mention removes the token, "hasn't changed" adds the
    note "no change reported"), Fitzpatrick skin type (I-VI) and modality. A sentence from which
    nothing was read, that is not a question nor a greeting, is kept verbatim in ``notes``.

    Args:
        text: one message of the user.
        previous: the details so far (not modified); single values said in ``text`` replace
            them, list values are added to them.

    Returns:
        The updated details (a new object) and the names of the fields that changed, in the
        order of :class:`PatientDetails`.
    """
    voc = _vocabulary()
    old = previous or PatientDetails()
    data = old.model_dump()
    seen: set[str] = set()
    for sentence in voc.sentence_split.split(text):
        if not sentence.strip():
            continue
        low = _normalise(sentence)
        facts = _sentence_facts(low, voc)
        for _, fact in facts:
            _apply(data, fact, seen, voc)
        quiet = voc.filler.fullmatch(low.strip(" \t.!,?"))
        note = sentence.strip()
        if not facts and not _is_question(low, voc) and not quiet and note not in data["notes"]:
            data["notes"].append(note)
    new = PatientDetails(**data)
    return new, _changed(old, new)


# ----------------------------------------------------------------------------- given fields


def _site_field(site: str, voc: _Vocabulary) -> str:
    """A site given as a field: its canonical name when the vocabulary knows it, else as given."""
    given = " ".join(site.split())
    low = _normalise(given)
    if low in voc.sites:
        return low
    for start, end, term in _term_matches(low, voc, frozenset({"site"})):
        if _site_usable(low, start, end, term, voc, False):
            return str(term.value)
    return given


def details_from_fields(
    age: int | None = None,
    sex: str | None = None,
    site: str | None = None,
    duration: str | None = None,
    skin_type: str | int | None = None,
    modality: str | None = None,
    previous: PatientDetails | None = None,
) -> PatientDetails:
    """Patient details from separate fields (CLI flags, API fields), merged into ``previous``.

    Args:
        age: whole years, 0 to 120.
        sex: ``female`` or ``male`` (any case).
        site: a body site; mapped to a HAM10000 ``localization`` value through the same
            vocabulary as :func:`parse_details` ("forearm" is ``upper extremity``), kept as
            given when the vocabulary does not know it.
        duration: how long the lesion has been there; normalised when recognised ("for three
            weeks" is "3 weeks"), else kept as given.
        skin_type: Fitzpatrick skin type, ``I``-``VI`` or ``1``-``6``.
        modality: ``dermoscopy`` or ``clinical``.
        previous: the details so far (not modified); the given fields replace theirs.

    Raises:
        ValueError: a field has a value that is not allowed; the message names the field and
            the allowed values.
    """
    voc = _vocabulary()
    data = (previous or PatientDetails()).model_dump()
    if age is not None:
        if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= voc.max_age:
            raise ValueError(
                f"age: {age!r} is not allowed (expected a whole number from 0 to {voc.max_age})"
            )
        data["age"] = age
    for name, value, allowed in (
        ("sex", sex, ("female", "male")),
        ("modality", modality, ("dermoscopy", "clinical")),
    ):
        if value is not None:
            key = str(value).strip().lower()
            if key not in allowed:
                raise ValueError(
                    f"{name}: {value!r} is not allowed (expected one of {', '.join(allowed)})"
                )
            data[name] = key
    for name, value in (("site", site), ("duration", duration)):
        if value is not None and not str(value).strip():
            raise ValueError(
                f"{name}: must not be empty (expected a {name.replace('_', ' ')} "
                "in words, or leave it out)"
            )
    if site is not None:
        data["site"] = _site_field(site, voc)
    if duration is not None:
        found = _durations(_normalise(duration), voc)
        data["duration"] = found[0][1] if found else " ".join(duration.split())
    if skin_type is not None:
        key = str(skin_type).strip().lower()
        if isinstance(skin_type, bool) or key not in voc.skin_types:
            raise ValueError(
                f"skin_type: {skin_type!r} is not allowed (expected a Fitzpatrick "
                "skin type I, II, III, IV, V or VI, or 1-6)"
            )
        data["skin_type"] = voc.skin_types[key]
    return PatientDetails(**data)


__all__ = ["canonical_sites", "details_from_fields", "parse_details"]
