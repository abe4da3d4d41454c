"""Knowledge files: coverage of the real data's labels, structure, user extension, errors."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import pytest

from dermfm.errors import KnowledgeError
from dermfm.knowledge import (
    concept_protocol,
    label_set_names,
    load_concepts,
    load_label_set,
    load_ontology,
)
from dermfm.knowledge.ontology import Ontology


def _labels(path: Path, column: str = "label") -> list[str]:
    with path.open(newline="") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def test_ontology_has_three_levels_and_required_fields() -> None:
    onto = load_ontology()
    assert len(onto) > 250
    for node_id in ("melanoma", "atopic_dermatitis", "tinea_corporis"):
        assert onto.depth(node_id) >= 3
    assert [n.id for n in onto.ancestors("melanoma")][-3:] == [
        "malignant_neoplasm",
        "neoplastic",
        "skin_condition",
    ]
    for node in onto.conditions():
        assert node.name and node.description and node.malignancy and node.urgency, node.id
        if node.malignancy == "malignant":
            assert any(a.id == "malignant_neoplasm" for a in onto.ancestors(node.id)), node.id


def test_isic_mappings_are_real_isic_paths(shared_data: Path) -> None:
    isic = set((shared_data / "vocab" / "isic_diagnosis_hierarchy.txt").read_text().splitlines())
    mapped = [n for n in load_ontology() if n.isic]
    assert len(mapped) > 20
    assert all(n.isic in isic for n in mapped), [n.isic for n in mapped if n.isic not in isic]


def test_label_sets_cover_the_real_datasets(shared_data: Path) -> None:
    assert set(label_set_names()) >= {"ham7", "pad6", "derm7pt", "f17k114", "dermnet", "all"}
    ham = load_label_set("ham7")
    assert set(_labels(shared_data / "ham10000" / "labels.csv")) == set(ham.labels)
    assert set(_labels(shared_data / "derm7pt" / "labels.csv")) == set(
        load_label_set("derm7pt").labels
    )
    counts = collections.Counter(_labels(shared_data / "dermnet_nz" / "labels.csv"))
    frequent = {topic for topic, n in counts.items() if n >= 20}
    assert frequent <= set(load_label_set("dermnet").labels)
    onto = load_ontology()
    mapped = set(load_label_set("dermnet").labels)
    unresolved = [
        t for t, n in counts.items() if n >= 10 and onto.lookup(t) is None and t not in mapped
    ]
    assert not unresolved
    bench = json.loads((shared_data / "vocab" / "derm1m_benchmark_classnames.json").read_text())
    assert load_label_set("f17k114").labels == bench["F17K_DISEASE_113_CLASSES"]
    assert load_label_set("pad6").names == bench["PAD_CLASSNAMES"]
    assert ham.names == bench["HAM_CLASSNAMES"]


def test_every_label_set_class_points_into_the_ontology() -> None:
    onto = load_ontology()
    for name in label_set_names():
        for cls in load_label_set(name).classes:
            assert cls.node in onto, (name, cls)
    ham = {c.label: c.node for c in load_label_set("ham7").classes}
    assert onto[ham["mel"]].malignancy == "malignant"
    assert onto[ham["nv"]].malignancy == "benign"


def test_concept_vocabulary_matches_skincon_and_derm7pt(shared_data: Path) -> None:
    vocab = load_concepts()
    skincon = (shared_data / "vocab" / "skincon_48_concepts.txt").read_text().splitlines()
    assert sorted(c.skincon_name for c in vocab if c.skincon_name) == sorted(
        s for s in skincon if s
    )
    with (shared_data / "derm7pt" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    derm7pt = [c for c in vocab if c.derm7pt]
    assert len(derm7pt) >= 7
    for concept in derm7pt:
        values = {r[concept.derm7pt["column"]] for r in rows}
        assert set(concept.derm7pt["positive"]) <= values, concept.id
    assert {"hair", "purple_pen", "dermoscope_border"} <= {
        c.id for c in vocab if c.group == "artifact"
    }
    terms = json.loads((shared_data / "vocab" / "concept_terms.json").read_text())
    phrases = {s.lower() for c in vocab for s in c.synonyms} | {c.name.lower() for c in vocab}
    assert all(key in phrases or key.replace(" ", "_") in {c.id for c in vocab} for key in terms)


def test_monet_protocol_is_packaged() -> None:
    protocol = concept_protocol("monet")
    assert len(protocol.targets) == 6 and len(protocol.references) == 6
    assert protocol.temperature == pytest.approx(0.0101083, rel=1e-4)


def test_users_extend_the_ontology_and_label_sets_with_their_own_files(tmp_path: Path) -> None:
    extra = tmp_path / "clinic.yaml"
    extra.write_text(
        "schema_version: 1\nnodes:\n"
        "  - id: clinic_special_naevus\n    name: clinic special naevus\n    kind: condition\n"
        "    parent: benign_neoplasm\n    malignancy: benign\n    urgency: routine\n"
        "    description: A local teaching category.\n"
    )
    onto = load_ontology([extra])
    assert onto.lookup("Clinic Special Naevus").id == "clinic_special_naevus"
    labels = tmp_path / "clinic_labels.yaml"
    labels.write_text(
        "name: clinic\nclasses:\n  - {label: csn, node: clinic_special_naevus}\n"
        "  - {label: mm, node: melanoma, name: melanoma}\n"
    )
    label_set = load_label_set(labels, onto)
    assert label_set.labels == ["csn", "mm"] and label_set.names[0] == "csn"
    assert "clinic_special_naevus" not in load_ontology()  # the packaged one is untouched


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nodes: [", "not valid YAML"),
        ("schema_version: 9\nnodes: []", "schema_version 9"),
        (
            "nodes:\n  - {id: x, name: x, parent: no_such_parent, malignancy: benign, "
            "urgency: routine}",
            "parent 'no_such_parent' is not defined",
        ),
        (
            "nodes:\n  - {id: melanoma, name: m, parent: skin_condition, malignancy: benign, "
            "urgency: routine}",
            "already defined",
        ),
        (
            "nodes:\n  - {id: y, name: y, parent: skin_condition, urgency: routine}",
            "missing required field 'malignancy'",
        ),
    ],
)
def test_bad_knowledge_files_name_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(KnowledgeError) as info:
        Ontology.from_files([load_ontology().sources[0], bad])
    assert problem in str(info.value)
    assert "bad.yaml" in str(info.value) or "ontology.yaml" in str(info.value)


def test_unknown_label_set_lists_the_packaged_ones() -> None:
    with pytest.raises(KnowledgeError, match="ham7"):
        load_label_set("no-such-set")


def test_assistant_label_set_is_the_union_of_the_development_sets_by_node() -> None:
    from dermfm.knowledge import load_label_set

    members = [load_label_set(n) for n in ("ham7", "derm7pt", "dermnet", "pad6", "f17k21", "sd198")]
    union = load_label_set("assistant")
    expected = {c.node for s in members for c in s.classes if c.node}
    nodes = [c.node for c in union.classes]
    assert set(nodes) == expected and len(nodes) == len(set(nodes))
    assert all(c.label == c.node for c in union.classes)
    # the first set's prompt name wins (ham7 before dermnet)
    ham_names = {c.node: c.name for c in members[0].classes}
    assert all(c.name == ham_names[c.node] for c in union.classes if c.node in ham_names)


def test_a_union_naming_an_unknown_set_is_an_error() -> None:
    from dermfm.knowledge.labels import _union

    with pytest.raises(KnowledgeError, match="union_of names 'nope'"):
        _union("mine", ["nope"], {}, "label_sets.yaml")
