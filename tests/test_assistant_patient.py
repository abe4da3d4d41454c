"""Patient details from conversation text (dermfm.assistant.patient)."""

from __future__ import annotations

import copy
import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dermfm.assistant.patient import _parse, canonical_sites, details_from_fields, parse_details
from dermfm.assistant.report import PatientDetails
from dermfm.errors import KnowledgeError

TERMS = Path(__file__).resolve().parents[1] / "src/dermfm/assistant/patient_terms.yaml"


def test_multi_turn_dialogue_accumulates_details_without_touching_previous() -> None:
    first, changed = parse_details(
        "Hi! I'm a 54-year-old woman. I have a mole on my upper back that I first noticed "
        "about 3 weeks ago."
    )
    assert (first.age, first.sex, first.site, first.duration) == (54, "female", "back", "3 weeks")
    assert changed == ["age", "sex", "site", "duration"]
    assert first.notes == []  # the greeting is not a note

    snapshot = first.model_dump()
    second, changed = parse_details(
        "It itches but it doesn't bleed. It has got bigger and darker.", first
    )
    assert first.model_dump() == snapshot  # previous unchanged
    assert (second.age, second.sex, second.site) == (54, "female", "back")
    assert (second.itch, second.pain, second.bleeding) == (True, None, False)
    assert second.evolution == ["growing", "changing_colour"]
    assert changed == ["itch", "bleeding", "evolution"]

    third, changed = parse_details(
        "My father had melanoma and I had lots of sunburns as a child. Skin type II.", second
    )
    assert third.sex == "female"  # the father is not the patient
    assert third.history == ["family_melanoma", "sunburns"]
    assert third.skin_type == "II"
    assert changed == ["history", "skin_type"]

    fourth, changed = parse_details(
        "The photo was taken with a dermatoscope. Should I be worried?", third
    )
    assert fourth.modality == "dermoscopy"
    assert fourth.notes == []  # a question is not a note
    assert changed == ["modality"]

    fifth, changed = parse_details(
        "Actually it hasn't grown, I measured it. I am a keen gardener.", fourth
    )
    assert fifth.evolution == ["changing_colour"]
    assert fifth.notes == ["I am a keen gardener."]
    assert changed == ["evolution", "notes"]
    assert fifth.history == ["family_melanoma", "sunburns"]
    assert fourth.evolution == ["growing", "changing_colour"]

    sixth, changed = parse_details("I'm 45, sorry. It is on my shoulder, not my back.", fifth)
    assert (sixth.age, sixth.site) == (45, "upper extremity")
    assert changed == ["age", "site"]


@pytest.mark.parametrize(
    "text",
    [
        "I am 54 years old.",
        "A 54-year-old with a spot.",
        "54 yo, spot on arm",
        "54yo",
        "Aged 54.",
        "I'm 54 and worried.",
        "im 54",
        "Age 54",
        "age: 54",
        "54 y/o",
        "54 y.o. woman with a mole",
        "She is 54.",
        "The patient is 54.",
        "54F, mole on shin",
    ],
)
def test_age_forms(text: str) -> None:
    assert parse_details(text)[0].age == 54


@pytest.mark.parametrize(
    "text",
    [
        "I am 130 years old.",
        "I'm 999",
        "aged 150",
        "I had sunburns at the age of 12.",
        "It is 5 mm wide and I'm 5 cm tall",
    ],
)
def test_implausible_or_other_numbers_are_not_an_age(text: str) -> None:
    details, changed = parse_details(text, PatientDetails(age=40))
    assert details.age == 40
    assert "age" not in changed
    assert details.duration is None  # "130 years old" is not a duration either


@pytest.mark.parametrize(
    ("text", "sex"),
    [
        ("I am a woman with a mole.", "female"),
        ("I'm a 60 year old man.", "male"),
        ("A 33-year-old female.", "female"),
        ("Female, aged 33.", "female"),
        ("54M, lesion on left shin", "male"),
        ("The patient is a man.", "male"),
        ("Sex: female", "female"),
        ("My husband has a new mole on his back.", "male"),
        ("My son's mole is itchy.", "male"),
        ("The spot is on my husband\u2019s neck.", "male"),
        ("I am asking for my daughter.", "female"),
        ("My wife noticed it on my back.", None),
        ("My mother had melanoma.", None),
        ("I am the man of the house.", None),
    ],
)
def test_sex_only_when_about_the_patient(text: str, sex: str | None) -> None:
    assert parse_details(text)[0].sex == sex


@pytest.mark.parametrize(
    ("text", "site"),
    [
        ("a mole on my forearm", "upper extremity"),
        ("spot on the upper arm", "upper extremity"),
        ("it is on my shoulder", "upper extremity"),
        ("on my thigh", "lower extremity"),
        ("on the shin", "lower extremity"),
        ("It came back on my leg.", "lower extremity"),
        ("on the sole of my foot", "foot"),
        ("between my toes", "foot"),
        ("in my palm", "hand"),
        ("on the back of my hand", "hand"),
        ("on my cheek", "face"),
        ("on the side of my nose", "face"),
        ("on my forehead", "face"),
        ("near my eye", "face"),
        ("on my lower back", "back"),
        ("Back.", "back"),
        ("site: back", "back"),
        ("at the back of my head", "scalp"),
        ("on my scalp", "scalp"),
        ("behind my ear", "ear"),
        ("on my belly", "abdomen"),
        ("on my chest", "chest"),
        ("at the back of my neck", "neck"),
        ("under a toenail", "acral"),
        ("in the armpit", "trunk"),
        ("on my left side", "trunk"),
        ("on the scrotum", "genital"),
        ("it is on my arm and another one on my leg", "upper extremity"),
        ("It keeps coming back.", None),
        ("Are there side effects?", None),
        ("On the other hand, it is small.", None),
        ("Keep an eye on it.", None),
        ("It is not on my face.", None),
    ],
)
def test_site_vocabulary(text: str, site: str | None) -> None:
    assert parse_details(text)[0].site == site


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("I've had it for 3 weeks.", "3 weeks"),
        ("for three weeks", "3 weeks"),
        ("It has been there since last year.", "since last year"),
        ("2 months", "2 months"),
        ("it appeared a few days ago", "a few days"),
        ("since childhood", "since childhood"),
        ("I've had it since I was a kid", "since childhood"),
        ("born with it", "since birth"),
        ("for about a month", "1 month"),
        ("for 1.5 years", "1.5 years"),
        ("for several weeks", "several weeks"),
        ("I have had it for years.", "a long time"),
        ("since 2019", "since 2019"),
        ("It bleeds 3 times a day.", None),
        ("I had a melanoma removed 5 years ago.", None),
        ("I had a melanoma removed 5 years ago, and this spot appeared 2 weeks ago.", "2 weeks"),
    ],
)
def test_duration(text: str, duration: str | None) -> None:
    assert parse_details(text)[0].duration == duration


@pytest.mark.parametrize(
    ("text", "itch", "pain", "bleeding"),
    [
        ("It itches.", True, None, None),
        ("Very itchy and painful.", True, True, None),
        ("It is not itchy.", False, None, None),
        ("No itch.", False, None, None),
        ("It doesn't itch.", False, None, None),
        ("It doesnt itch", False, None, None),
        ("It never bleeds.", None, None, False),
        ("It bleeds.", None, None, True),
        ("It hurts when I touch it.", None, True, None),
        ("It is painless.", None, False, None),
        ("No itching or bleeding.", False, None, False),
        ("It doesn't hurt but it bleeds.", None, False, True),
        ("No pain, no itch, it bleeds sometimes.", False, False, True),
        ("itch: no, bleeding: yes", False, None, True),
        ("It is asymptomatic.", False, False, None),
        ("Neither itchy nor painful.", False, False, None),
        ("Not sure if it bleeds.", None, None, None),
        ("Is it normal for a mole to itch?", None, None, None),
        ("It itches, should I worry?", True, None, None),
        ("I have high blood pressure.", None, None, None),
        ("It is an open sore.", None, None, None),
    ],
)
def test_symptoms_with_negation(
    text: str, itch: bool | None, pain: bool | None, bleeding: bool | None
) -> None:
    details = parse_details(text)[0]
    assert (details.itch, details.pain, details.bleeding) == (itch, pain, bleeding)


@pytest.mark.parametrize(
    ("text", "evolution"),
    [
        ("It is growing.", ["growing"]),
        ("It has got bigger.", ["growing"]),
        ("It has changed colour.", ["changing_colour"]),
        ("It got darker.", ["changing_colour"]),
        ("The shape has changed.", ["changing_shape"]),
        ("It is a new mole.", ["new"]),
        ("It appeared recently.", ["new"]),
        ("It is raised now.", ["raised"]),
        ("It is crusty.", ["crusting"]),
        ("It is an open sore that won't heal.", ["crusting"]),
        ("It is not growing.", []),
        ("It is bigger than a pea.", []),
    ],
)
def test_evolution_tokens(text: str, evolution: list[str]) -> None:
    assert parse_details(text)[0].evolution == evolution


def test_negated_change_removes_tokens_and_notes_no_change() -> None:
    before = PatientDetails(evolution=["growing", "new"], notes=["It came up suddenly."])
    after, changed = parse_details("It hasn't changed.", before)
    assert after.evolution == ["new"]  # "new" is no change over time
    assert after.notes == ["It came up suddenly.", "no change reported"]
    assert changed == ["evolution", "notes"]
    again, changed = parse_details("No changes at all.", after)
    assert again.notes == after.notes and changed == []

    grown = PatientDetails(evolution=["growing", "changing_colour"])
    assert parse_details("It hasn't grown.", grown)[0].evolution == ["changing_colour"]
    assert parse_details("It has not changed colour.", grown)[0].evolution == ["growing"]


@pytest.mark.parametrize(
    ("text", "history"),
    [
        ("I had a melanoma removed 5 years ago.", ["personal_melanoma"]),
        ("Previous basal cell carcinoma on my nose.", ["personal_skin_cancer"]),
        ("Family history of melanoma.", ["family_melanoma"]),
        ("My sister was diagnosed with melanoma.", ["family_melanoma"]),
        ("I have lots of moles.", ["many_moles"]),
        ("I had a kidney transplant and I am immunosuppressed.", ["immunosuppression"]),
        ("I work outdoors and had blistering sunburns as a kid.", ["sun_exposure", "sunburns"]),
        ("No family history of melanoma.", []),
        ("I have never had skin cancer.", []),
    ],
)
def test_history(text: str, history: list[str]) -> None:
    assert parse_details(text)[0].history == history


def test_negated_history_removes_a_token() -> None:
    before = PatientDetails(history=["family_melanoma", "many_moles"])
    after, changed = parse_details("Sorry, there is no family history of melanoma.", before)
    assert after.history == ["many_moles"] and changed == ["history"]


@pytest.mark.parametrize(
    ("text", "skin_type"),
    [
        ("Skin type IV.", "IV"),
        ("Fitzpatrick 5", "V"),
        ("skin type II", "II"),
        ("She is Fitzpatrick skin type iii.", "III"),
        ("type 6", "VI"),
        ("skin type: 1", "I"),
        ("I have type 2 diabetes.", None),
        ("I don't know what type I have.", None),
    ],
)
def test_skin_type(text: str, skin_type: str | None) -> None:
    assert parse_details(text)[0].skin_type == skin_type


@pytest.mark.parametrize(
    ("text", "modality"),
    [
        ("It is a dermoscopy image.", "dermoscopy"),
        ("Taken with a dermatoscope.", "dermoscopy"),
        ("A dermoscopic photo.", "dermoscopy"),
        ("Just a phone photo.", "clinical"),
        ("It is a clinical photo.", "clinical"),
        ("I took a picture with my phone.", "clinical"),
        ("Here is a photo.", None),
    ],
)
def test_modality(text: str, modality: str | None) -> None:
    assert parse_details(text)[0].modality == modality


def test_notes_keep_unread_statements_verbatim_once() -> None:
    text = "I am worried about it. What could it be? Thanks! Not sure if it is growing."
    details, changed = parse_details(text)
    assert details.notes == ["I am worried about it.", "Not sure if it is growing."]
    assert details.evolution == []
    assert changed == ["notes"]
    again, changed = parse_details("I am worried about it.", details)
    assert again.notes == details.notes and changed == []


def test_restating_details_changes_nothing_and_first_mention_wins() -> None:
    details, _ = parse_details("A 40-year-old man, mole on the arm, itchy.")
    same, changed = parse_details("He is 40. It is on his arm and it itches.", details)
    assert same == details and changed == []
    first, _ = parse_details("It is on my arm and another one on my leg. Also on my chest.")
    assert first.site == "upper extremity"


def _ham_localizations(shared_data: Path) -> set[str]:
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    column = "localization" if "localization" in rows[0] else "body_site"
    return {r[column] for r in rows if r[column] and r[column] != "unknown"}


def test_canonical_sites_are_ham10000_localizations(shared_data: Path) -> None:
    ham = _ham_localizations(shared_data)
    assert set(canonical_sites()) <= ham
    doc = yaml.safe_load(TERMS.read_text(encoding="utf-8"))
    assert set(doc["sites"]["vocabulary"]) <= ham
    assert set(doc["sites"]["ambiguous"]) <= ham


def test_terms_file_is_versioned_and_sites_map_to_themselves() -> None:
    doc = yaml.safe_load(TERMS.read_text(encoding="utf-8"))
    assert doc["schema_version"] == 1 and doc["version"] == "2026.11.0"
    assert canonical_sites() == list(doc["sites"]["vocabulary"])
    for site in canonical_sites():
        assert parse_details(f"A lesion on the {site}.")[0].site == site
        assert details_from_fields(site=site.upper()).site == site


def test_details_from_fields_validates_and_normalises() -> None:
    previous = PatientDetails(age=30, itch=True, history=["many_moles"])
    frozen = copy.deepcopy(previous)
    details = details_from_fields(
        age=54,
        sex="Female",
        site="left forearm",
        duration="for three weeks",
        skin_type=4,
        modality="Dermoscopy",
        previous=previous,
    )
    assert previous == frozen
    assert (details.age, details.sex, details.site, details.duration) == (
        54,
        "female",
        "upper extremity",
        "3 weeks",
    )
    assert (details.skin_type, details.modality) == ("IV", "dermoscopy")
    assert (details.itch, details.history) == (True, ["many_moles"])
    assert details_from_fields(skin_type="iv").skin_type == "IV"
    assert details_from_fields(site="palm of hand").site == "hand"
    assert details_from_fields(site="Oral mucosa").site == "Oral mucosa"  # unknown: as given
    assert details_from_fields(duration="ages and ages").duration == "ages and ages"
    assert details_from_fields(age=0).age == 0
    assert details_from_fields() == PatientDetails()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"age": 121}, r"^age: .*0 to 120"),
        ({"age": -1}, r"^age: .*0 to 120"),
        ({"age": True}, r"^age: "),
        ({"sex": "other"}, r"^sex: 'other' .*female, male"),
        ({"skin_type": "VII"}, r"^skin_type: 'VII' .*I, II, III, IV, V or VI, or 1-6"),
        ({"skin_type": 0}, r"^skin_type: 0 "),
        ({"modality": "x-ray"}, r"^modality: 'x-ray' .*dermoscopy, clinical"),
        ({"site": "  "}, r"^site: must not be empty"),
        ({"duration": ""}, r"^duration: must not be empty"),
    ],
)
def test_details_from_fields_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        details_from_fields(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d["sites"]["ambiguous"].update({"elbow": ["x"]}), "sites.ambiguous"),
        (lambda d: d["history"].update({"bad": ["(unclosed"]}), "invalid regular expression"),
        (lambda d: d.pop("age"), "missing required field 'age'"),
        (lambda d: d["evolution"]["unchanged"].update({"clears": ["shrinking"]}), "clears"),
        (lambda d: d["negation"].update({"window": 0}), "negation.window"),
    ],
)
def test_bad_terms_file_names_file_and_problem(
    edit: Callable[[dict[str, Any]], object], problem: str
) -> None:
    doc = yaml.safe_load(TERMS.read_text(encoding="utf-8"))
    edit(doc)
    with pytest.raises(KnowledgeError, match=re.escape(problem)) as info:
        _parse(doc, TERMS)
    assert str(TERMS) in str(info.value)
