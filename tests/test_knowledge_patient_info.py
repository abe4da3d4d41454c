"""Plain-language condition information: coverage, fallback, safety of the texts, readability,
user extension files and their errors."""

from __future__ import annotations

import collections
import csv
import json
import re
import statistics
from pathlib import Path

import pytest

from dermfm.assistant.report import ConditionInfo
from dermfm.errors import KnowledgeError
from dermfm.knowledge import (
    PatientInfo,
    load_label_set,
    load_ontology,
    load_patient_info,
)

# A number followed by a unit of amount, or a percentage.
DOSE = re.compile(
    r"\d+(?:[.,]\d+)?\s*(?:(?:mg|mcg|µg|ug|ml|g|iu|units?|micrograms?|milligrams?|grams?"
    r"|millilit(?:re|er)s?)\b|%)",
    re.IGNORECASE,
)
# How often to take something.
FREQUENCY = re.compile(
    r"\b(?:once|twice|thrice)\s+(?:a\s+)?(?:day|daily|weekly)\b|\btimes\s+(?:a|per)\s+(?:day|week)\b"
    r"|\btimes\s+daily\b|\bper\s+day\b|\bevery\s+\w+\s+hours\b|\bdaily\s+dose\b",
    re.IGNORECASE,
)
# Statements that a diagnosis is certain.
CERTAINTY = re.compile(
    r"\byou(?:'ve| have)\b|\bthis is\b|\bdefinitely\b|\bcertain(?:ly)?\b|\bwithout (?:a )?doubt\b"
    r"|\bno doubt\b|\bguarantee|\bconfirm|\bdiagnosed with\b|\bdiagnosis is\b",
    re.IGNORECASE,
)
FIELDS = ("what_it_is", "usual_course", "treatments", "when_to_seek_care")


def _texts(info: PatientInfo) -> dict[str, str]:
    return {
        node: " ".join(getattr(entry, f) for f in FIELDS) for node, entry in info.entries.items()
    }


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _entry_yaml(node: str, **texts: str) -> str:
    body = {f: f"Some plain text about {node}, field {f}." for f in FIELDS} | texts
    lines = [f"  {node}:"] + [f"    {k}: {json.dumps(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def test_packaged_file_is_versioned_and_every_category_has_its_own_entry() -> None:
    info = load_patient_info()
    onto = load_ontology()
    assert info.version == "2026.11.0"
    assert load_patient_info() is info  # cached
    categories = [n for n in onto if n.kind == "category" and n.parent is not None]
    assert len(categories) > 60
    missing = [n.id for n in categories if n.id not in info]
    assert not missing
    for node in categories:
        found = info.lookup(node.id)
        assert found is not None and found.source == node.id and found.name == node.name


@pytest.mark.parametrize("label_set", ["ham7", "derm7pt"])
def test_every_benchmark_class_resolves_to_its_own_entry(label_set: str) -> None:
    info = load_patient_info()
    onto = load_ontology()
    classes = load_label_set(label_set).classes
    assert len(classes) >= 7
    for c in classes:
        assert c.node is not None, c.label
        found = info.lookup(c.node)
        assert isinstance(found, ConditionInfo)
        assert (found.node, found.source, found.name) == (c.node, c.node, onto[c.node].name)


def test_malignant_premalignant_and_urgent_conditions_have_their_own_entries() -> None:
    info = load_patient_info()
    risky = [
        n.id
        for n in load_ontology().conditions()
        if n.malignancy in ("malignant", "premalignant") or n.urgency in ("urgent", "emergency")
    ]
    assert {"melanoma", "squamous_cell_carcinoma", "necrotising_fasciitis"} <= set(risky)
    assert [n for n in risky if n not in info] == []


def test_the_80_most_frequent_dermnet_topics_have_their_own_entries(shared_data: Path) -> None:
    onto = load_ontology()
    by_label = {c.label: c.node for c in load_label_set("dermnet").classes}
    with (shared_data / "dermnet_nz" / "labels.csv").open(newline="") as fh:
        counts = collections.Counter(row["label"] for row in csv.DictReader(fh))
    mapped: list[tuple[int, str]] = []
    for topic, n in counts.most_common():
        node = by_label.get(topic) or getattr(onto.lookup(topic), "id", None)
        if node is not None:
            mapped.append((n, node))
    cutoff = mapped[79][0]  # topics tied with the 80th are included too
    frequent = {node for n, node in mapped if n >= cutoff}
    assert len(frequent) >= 75
    info = load_patient_info()
    assert sorted(frequent - set(info)) == []


def test_a_leaf_without_an_entry_falls_back_to_its_nearest_ancestor() -> None:
    info = load_patient_info()
    assert "junctional_nevus" not in info
    found = info.lookup("junctional_nevus")
    assert found is not None
    assert (found.node, found.name, found.source) == (
        "junctional_nevus",
        "junctional nevus",
        "melanocytic_nevus",
    )
    assert found.what_it_is == info.entries["melanocytic_nevus"].what_it_is
    assert info.lookup("no_such_node") is None


def test_a_user_defined_node_falls_back_through_the_user_ontology(tmp_path: Path) -> None:
    onto_file = _write(
        tmp_path,
        "my_ontology.yaml",
        "schema_version: 1\nversion: test\nnodes:\n"
        "  - {id: my_viral_rash, name: my viral rash, kind: condition, parent: viral,\n"
        "     malignancy: not_neoplastic, urgency: routine, description: A test node.}\n",
    )
    onto = load_ontology([onto_file])
    info = load_patient_info()
    assert info.lookup("my_viral_rash") is None  # not in the packaged ontology
    found = info.lookup("my_viral_rash", ontology=onto)
    assert found is not None and found.source == "viral" and found.name == "my viral rash"

    entries = _write(tmp_path, "mine.yaml", "entries:\n" + _entry_yaml("my_viral_rash"))
    with pytest.raises(KnowledgeError, match="my_viral_rash"):
        load_patient_info([entries])
    own = load_patient_info([entries], ontology=onto).lookup("my_viral_rash")
    assert own is not None and own.source == "my_viral_rash"


def test_texts_have_no_dose_frequency_or_certainty_phrase() -> None:
    assert DOSE.search("apply a 1% cream") and DOSE.search("take 500 mg") and DOSE.search("2 ml")
    assert FREQUENCY.search("use it twice daily") and FREQUENCY.search("three times a day")
    assert CERTAINTY.search("You have melanoma.") and CERTAINTY.search("This is definitely BCC")
    assert not DOSE.search("See a doctor within days about six or more spots.")
    texts = _texts(load_patient_info())
    assert len(texts) > 200
    for pattern in (DOSE, FREQUENCY, CERTAINTY):
        hits = {node: pattern.findall(text) for node, text in texts.items() if pattern.search(text)}
        assert hits == {}, pattern.pattern


def test_every_field_is_one_or_two_short_sentences_and_treatments_name_a_clinician() -> None:
    for node, entry in load_patient_info().entries.items():
        for field in FIELDS:
            text = getattr(entry, field)
            sentences = re.split(r"(?<=[.!?])\s+", text)
            assert text.endswith("."), (node, field)
            assert 1 <= len(sentences) <= 2, (node, field, text)
            assert max(len(s.split()) for s in sentences) <= 28, (node, field, text)
        assert re.search(r"clinician|doctor|hospital|team|needed", entry.treatments), node
        assert re.search(r"doctor|care|emergency|clinic|dentist|midwife", entry.when_to_seek_care)


def test_mean_flesch_kincaid_grade_is_at_most_9() -> None:
    textstat = pytest.importorskip("textstat.textstat")
    # textstat's "en_US" syllable counter downloads NLTK's CMU dictionary on first use, which an
    # offline machine cannot do; the tag "en-US" selects its pyphen (hyphenation) counter.
    reference = textstat.textstatistics()
    reference.set_lang("en-US")
    grades = [reference.flesch_kincaid_grade(t) for t in _texts(load_patient_info()).values()]
    assert reference.flesch_kincaid_grade("The cat sat on the mat. It was warm.") < 3
    assert statistics.mean(grades) <= 9.0


def test_user_files_override_and_add_entries_later_files_winning(tmp_path: Path) -> None:
    first = _write(
        tmp_path,
        "first.yaml",
        "schema_version: 1\nversion: mine-1\nentries:\n"
        + _entry_yaml("melanoma", what_it_is="First override of melanoma.")
        + _entry_yaml("junctional_nevus", usual_course="Added by the user."),
    )
    second = _write(
        tmp_path,
        "second.json",
        json.dumps(
            {
                "version": "mine-2",
                "entries": {"melanoma": {f: f"Second file, {f}." for f in FIELDS}},
            }
        ),
    )
    packaged = load_patient_info()
    info = load_patient_info([first, second])
    assert info.version == "2026.11.0+mine-1+mine-2"
    melanoma = info.lookup("melanoma")
    assert melanoma is not None and melanoma.what_it_is == "Second file, what_it_is."
    added = info.lookup("junctional_nevus")
    assert added is not None
    assert (added.source, added.usual_course) == ("junctional_nevus", "Added by the user.")
    assert len(info) == len(packaged) + 1
    # the cached packaged entries are untouched; with only the first file, its override holds
    assert "junctional_nevus" not in packaged and "junctional_nevus" not in load_patient_info()
    assert load_patient_info([first]).entries["melanoma"].what_it_is == (
        "First override of melanoma."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("entries:\n" + _entry_yaml("not_a_node"), "not_a_node"),
        (
            "entries:\n  melanoma:\n    what_it_is: A.\n    usual_course: B.\n"
            "    when_to_seek_care: C.\n",
            "entry 'melanoma': missing required field 'treatments'",
        ),
        ("entries:\n" + _entry_yaml("melanoma", treatments="   "), "'treatments'"),
        ("entries:\n" + _entry_yaml("melanoma", dose="Take two."), "unknown field(s) ['dose']"),
        ("entries:\n  melanoma: Just a sentence.\n", "entry 'melanoma': expected a mapping"),
        ("- a list\n- not a mapping\n", "expected a mapping at the top level"),
        ("version: x\nentries: [melanoma]\n", "'entries'"),
        ("entries: {melanoma: {what_it_is: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_user_file_raises_an_error_naming_the_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(KnowledgeError) as err:
        load_patient_info([path])
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_a_missing_user_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="file not found"):
        load_patient_info([tmp_path / "absent.yaml"])
