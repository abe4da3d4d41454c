"""Naming latents: the vocabulary, term embeddings, centred cosine naming and the names table."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics.pairwise import cosine_similarity

import dermfm
from dermfm.errors import KnowledgeError
from dermfm.interpret.naming import (
    USER_KIND,
    best_latents_for,
    load_vocabulary,
    name_latents,
    similarity_matrix,
    text_embeddings,
    write_names_table,
)
from dermfm.knowledge import load_concepts, load_ontology

PACKAGED = Path(dermfm.__file__).parent / "interpret" / "vocabulary.yaml"


@pytest.fixture(scope="module")
def bundled():
    """The bundled model (real MiniLM text tower)."""
    return dermfm.load_model()


def _of_kind(vocabulary, kind: str) -> list:
    return [e for e in vocabulary if e.kind == kind]


def _planted(text: np.ndarray, rows: np.ndarray, gap: float, noise: float, seed: int):
    """Directions = term embeddings + isotropic noise + one constant 'modality gap' vector."""
    rng = np.random.default_rng(seed)
    d = text.shape[1]
    offset = rng.normal(size=d)
    offset *= gap / np.linalg.norm(offset)
    return text[rows] + noise * rng.normal(size=(len(rows), d)) / np.sqrt(d) + offset


# --------------------------------------------------------------------------- vocabulary


def test_packaged_vocabulary_draws_kinds_from_the_knowledge_files() -> None:
    spec = yaml.safe_load(PACKAGED.read_text())["kinds"]
    concepts = load_concepts()
    vocabulary = load_vocabulary()
    assert vocabulary.kinds == ["condition", "concept", "colour", "body_site", "artifact"]
    terms = [t.casefold() for t in vocabulary.terms]
    assert len(terms) == len(set(terms))

    conditions = load_ontology().conditions()
    assert [(e.term, e.source_id) for e in _of_kind(vocabulary, "condition")] == [
        (n.name, n.id) for n in conditions
    ]
    artifacts = _of_kind(vocabulary, "artifact")
    assert {e.source_id for e in artifacts} == {c.id for c in concepts if c.group == "artifact"}
    assert {"ruler", "hair", "watermark", "purple_pen", "dermoscope_border", "gel"} <= {
        e.source_id for e in artifacts
    }
    ruler = vocabulary[vocabulary.find("ruler")]
    assert ruler.kind == "artifact"
    assert ruler.phrases == concepts["ruler"].synonyms

    # colour: the listed SkinCon colours, the concept file's colour group and the plain shades
    colour = load_vocabulary(kinds=["colour"])
    listed = spec["colour"]["concepts"]
    group = [c.id for c in concepts if c.group == "colour"]
    assert [e.source_id for e in colour] == [
        c.id for c in concepts if c.id in listed or c.id in group
    ] + [None] * len(spec["colour"]["terms"])
    assert colour.terms[-len(spec["colour"]["terms"]) :] == spec["colour"]["terms"]
    sites = load_vocabulary(kinds=["body_site"])
    assert len(sites) == len(spec["body_site"]["terms"]) + sum(
        c.group == "anatomy" for c in concepts
    )

    # a concept claimed by id by the colour kind is not also a 'concept'
    concept_kind = load_vocabulary(kinds=["concept"])
    expected = [c.id for c in concepts if c.group in ("skincon", "derm7pt") and c.id not in listed]
    assert [e.source_id for e in concept_kind] == expected
    assert "black" not in [e.source_id for e in concept_kind]
    assert colour.templates["colour"] == tuple(spec["colour"]["templates"])


def test_extra_words_are_an_open_vocabulary_of_kind_user(tmp_path: Path) -> None:
    words = load_vocabulary(kinds=["artifact"], extra_words=["sunscreen residue", "Ruler"])
    assert words.terms[-1] == "sunscreen residue"
    assert words[len(words) - 1].kind == USER_KIND
    # a user word equal to a known term keeps the known entry (and its concept id)
    assert [e.term.casefold() for e in words].count("ruler") == 1
    assert words[words.find("Ruler")].source_id == "ruler"

    listing = tmp_path / "words.txt"
    listing.write_text("# my words\ntattoo\n\n  surgical scar  \nband-aid\n")
    only_user = load_vocabulary(kinds=(), extra_words=listing)
    assert only_user.terms == ["tattoo", "surgical scar", "band-aid"]
    assert only_user.kinds == [USER_KIND]
    assert only_user.templates[USER_KIND] == tuple(
        yaml.safe_load(PACKAGED.read_text())["templates"]
    )


def test_user_vocabulary_file(tmp_path: Path) -> None:
    path = tmp_path / "vocab.yaml"
    path.write_text(
        "schema_version: 1\ntemplates: ['a photo of {}']\nkinds:\n"
        "  shape:\n    terms: [round, oval, irregular]\n"
        "  marks:\n    concepts: [ruler]\n    templates: ['{} next to a mole']\n"
    )
    vocabulary = load_vocabulary(path=path)
    assert vocabulary.terms == ["round", "oval", "irregular", "ruler"]
    assert vocabulary.templates == {"shape": ("a photo of {}",), "marks": ("{} next to a mole",)}
    assert vocabulary[3].source_id == "ruler"
    assert load_vocabulary("marks", path=path).terms == ["ruler"]  # one kind by name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kinds: [unclosed", "not valid YAML"),
        ("templates: ['a {}']\n", "'kinds'"),
        ("templates: ['a {}']\nkinds:\n  x:\n    concept_groups: [nope]\n", "nope"),
        ("templates: ['no placeholder']\nkinds:\n  x:\n    terms: [a]\n", "has no '{}'"),
        ("templates: ['a {}']\nkinds:\n  x:\n    term: [a]\n", "unknown fields"),
        ("templates: ['a {}']\nkinds:\n  x:\n    description: empty\n", "no terms"),
        ("templates: ['a {}']\nkinds:\n  x:\n    ontology: categories\n", "ontology"),
        (
            "templates: ['a {}']\nkinds:\n  x:\n    concepts: [hair]\n  y:\n    concepts: [hair]\n",
            "listed under kinds",
        ),
    ],
)
def test_bad_vocabulary_file_raises_error_naming_it(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(KnowledgeError, match=message) as info:
        load_vocabulary(path=path)
    assert str(path) in str(info.value)


def test_bad_kinds_and_word_lists(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="tattoos") as info:
        load_vocabulary(kinds=["artifact", "tattoos"])
    assert str(PACKAGED) in str(info.value)
    missing = tmp_path / "absent.txt"
    with pytest.raises(KnowledgeError, match="not found") as info:
        load_vocabulary(extra_words=missing)
    assert str(missing) in str(info.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(KnowledgeError, match="empty"):
        load_vocabulary(extra_words=empty)
    with pytest.raises(ValueError, match="non-empty strings"):
        load_vocabulary(extra_words=["ok", "  "])
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary(kinds=())


# --------------------------------------------------------------------------- embeddings


def test_text_embeddings_are_the_prompt_ensemble_mean_over_phrases(oc_model) -> None:
    vocabulary = load_vocabulary(kinds=["artifact"], extra_words=["sunscreen residue"])
    got = text_embeddings(oc_model, vocabulary)
    assert got.shape == (len(vocabulary), oc_model.embed_dim)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    for row, entry in enumerate(vocabulary):
        templates = vocabulary.templates[entry.kind]
        per_phrase = []
        for phrase in entry.phrases:
            prompts = [t.replace("{}", phrase) for t in templates]
            per_phrase.append(normalise(normalise(oc_model.encode_texts(prompts)).mean(dim=0)))
        expected = normalise(torch.stack(per_phrase).mean(dim=0))
        torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- naming


def test_planted_directions_are_named_by_their_terms_with_a_real_text_tower(bundled) -> None:
    vocabulary = load_vocabulary(kinds=["concept", "colour", "body_site", "artifact"])
    text = text_embeddings(bundled, vocabulary).numpy().astype(np.float64)
    wanted = ["ruler", "hair", "watermark", "purple_pen", "face", "dark brown", "pigment_network"]
    rng = np.random.default_rng(3)
    rows = np.array([vocabulary.find(k) for k in wanted] + list(rng.choice(len(vocabulary), 40)))
    directions = _planted(text, rows, gap=4.0, noise=0.3, seed=0)

    names = name_latents(directions, text, vocabulary, top=3)
    assert [n.best.term for n in names] == [vocabulary[r].term for r in rows]
    assert names[0].best.term == "ruler"
    assert names[0].best.kind == "artifact"
    assert names[0].best.source_id == "ruler"
    assert names[2].best.term == "watermark or text overlay"
    assert all(n.margin > 0 for n in names)
    assert names[0].to_dict()["names"][0] == {
        "term": "ruler",
        "kind": "artifact",
        "source_id": "ruler",
        "score": names[0].best.score,
    }


def test_centring_removes_the_modality_gap(oc_model) -> None:
    vocabulary = load_vocabulary(kinds=["concept", "colour", "artifact"])
    text = text_embeddings(oc_model, vocabulary).numpy().astype(np.float64)
    # a random text tower, like CLIP, puts all terms in a narrow cone
    assert (text @ text.T).mean() > 0.8
    rows = np.random.default_rng(0).choice(len(vocabulary), 60, replace=False)
    directions = _planted(text, rows, gap=1.0, noise=0.1, seed=1)
    truth = [vocabulary[r].term for r in rows]

    def accuracy(centre: bool) -> float:
        names = name_latents(directions, text, vocabulary, centre=centre)
        return float(np.mean([n.best.term == t for n, t in zip(names, truth, strict=True)]))

    assert accuracy(centre=True) >= 0.95
    assert accuracy(centre=False) <= 0.5


def test_scores_are_centred_cosines_and_names_are_sorted() -> None:
    rng = np.random.default_rng(7)
    vocabulary = load_vocabulary(kinds=(), extra_words=[f"term {i}" for i in range(12)])
    directions, text = rng.normal(size=(9, 16)), rng.normal(size=(12, 16))

    centred = cosine_similarity(directions - directions.mean(0), text - text.mean(0))
    np.testing.assert_allclose(similarity_matrix(directions, text), centred, atol=1e-12)
    raw = cosine_similarity(directions, text)
    np.testing.assert_allclose(similarity_matrix(directions, text, centre=False), raw, atol=1e-12)

    # tensors are accepted (as float32)
    names = name_latents(torch.tensor(directions), torch.tensor(text), vocabulary, top=4)
    assert [n.latent for n in names] == list(range(9))
    for n, row in zip(names, centred, strict=True):
        best = sorted(range(12), key=lambda j: -row[j])
        assert [s.term for s in n.names] == [f"term {j}" for j in best[:4]]
        np.testing.assert_allclose([s.score for s in n.names], row[best[:4]], atol=1e-6)
        assert n.margin == pytest.approx(row[best[0]] - row[best[1]], abs=1e-6)


def test_best_latents_for_a_term_or_concept_id(oc_model) -> None:
    vocabulary = load_vocabulary(kinds=["concept", "artifact"])
    text = text_embeddings(oc_model, vocabulary).numpy().astype(np.float64)
    rng = np.random.default_rng(5)
    ruler = vocabulary.find("ruler")
    rows = rng.choice(np.delete(np.arange(len(vocabulary)), ruler), 30, replace=False)
    rows[17] = ruler
    directions = _planted(text, rows, gap=1.0, noise=0.05, seed=2)

    by_id = best_latents_for("ruler", directions, text, vocabulary, top=3)
    assert by_id[0][0] == 17
    assert len(by_id) == 3
    assert by_id[0][1] > by_id[1][1] >= by_id[2][1]
    assert best_latents_for("Ruler ", directions, text, vocabulary)[0][0] == 17
    expected = similarity_matrix(directions, text)[17, vocabulary.find("ruler")]
    assert by_id[0][1] == pytest.approx(expected)
    with pytest.raises(KeyError, match="tattoo"):
        best_latents_for("tattoo", directions, text, vocabulary)


def test_bad_naming_inputs() -> None:
    vocabulary = load_vocabulary(kinds=(), extra_words=["a", "b", "c"])
    with pytest.raises(ValueError, match="same model"):
        name_latents(np.ones((2, 4)), np.ones((3, 5)), vocabulary)
    with pytest.raises(ValueError, match="3 terms"):
        name_latents(np.ones((2, 4)), np.ones((2, 4)), vocabulary)
    with pytest.raises(ValueError, match="top"):
        name_latents(np.ones((2, 4)), np.ones((3, 4)), vocabulary, top=0)
    with pytest.raises(ValueError, match="NaN"):
        name_latents(np.full((2, 4), np.nan), np.ones((3, 4)), vocabulary)
    with pytest.raises(ValueError, match="two terms"):
        name_latents(np.ones((2, 4)), np.ones((1, 4)), load_vocabulary(kinds=(), extra_words=["a"]))


def test_names_table_csv_and_markdown(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    vocabulary = load_vocabulary(kinds=(), extra_words=["ruler | scale", "hair", "gel", "ink"])
    names = name_latents(rng.normal(size=(5, 8)), rng.normal(size=(4, 8)), vocabulary, top=2)
    frequency = np.array([0.5, 0.0, 0.25, 0.125, 1.0])
    csv_path, md_path = write_names_table(names, tmp_path / "names", frequencies=frequency)
    assert (csv_path.name, md_path.name) == ("names.csv", "names.md")

    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["latent"]) for r in rows] == list(range(5))
    for row, n in zip(rows, names, strict=True):
        assert row["name_1"] == n.best.term
        assert row["kind_1"] == USER_KIND
        assert float(row["score_2"]) == pytest.approx(n.names[1].score, abs=1e-4)
        assert float(row["margin"]) == pytest.approx(n.margin, abs=1e-4)
        assert float(row["frequency"]) == frequency[n.latent]

    lines = md_path.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(names)  # header, separator, one row per latent
    # a '|' inside a term is escaped, so every row has the header's number of cells
    assert {len(re.split(r"(?<!\\)\|", line)) for line in table} == {6}
    assert "25.00%" in table[2 + 2]
    with pytest.raises(ValueError, match="fewer"):
        write_names_table(names, tmp_path / "short", frequencies=[0.1])
