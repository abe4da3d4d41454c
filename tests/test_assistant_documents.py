"""The assistant's documents (report, SOAP note, patient handout, referral letter) in Markdown
and PDF, and the readability measures behind the handout's stated reading level."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pypdf import PdfReader
from textstat.backend import counts as ts_counts
from textstat.backend import metrics as ts_metrics

from dermfm.assistant.documents import (
    DOCUMENTS,
    document_texts,
    markdown_to_pdf,
    parse_markdown,
    patient_handout,
    referral_letter,
    report_markdown,
    soap_note,
    write_documents,
)
from dermfm.assistant.readability import (
    flesch_kincaid_grade,
    flesch_reading_ease,
    syllables,
    text_counts,
)
from dermfm.assistant.report import (
    Candidate,
    ConditionInfo,
    PatientDetails,
    QualityCheck,
    QualityProblem,
    Triage,
)
from dermfm.errors import KnowledgeError

# textstat's English syllable counts come from the CMU dictionary, which NLTK downloads on first
# use; with no network textstat counts syllables by hyphenation points (pyphen) instead. "en-US"
# (not "en_US") selects that path directly, so the reference never tries a download.
TEXTSTAT_LANG = "en-US"

CERTAINTY = re.compile(
    r"\b(definitely|certainly|you have|this is (a |an )?(melanoma|nevus))\b", re.I
)


# --- readability ----------------------------------------------------------------------------

# Syllables as a dictionary divides them, for words each rule of the counter is there for.
DICTIONARY_SYLLABLES = {
    "skin": 1, "melanoma": 4, "possibilities": 5, "dermatologist": 5, "computer": 3,
    "make": 1, "whole": 1, "nurse": 1, "change": 1, "moles": 1, "checked": 1, "coloured": 2,
    "table": 2, "little": 2, "agree": 2, "agreed": 2, "changes": 2, "nurses": 2, "treated": 2,
    "faded": 2, "café": 2, "naevus": 2, "the": 1, "be": 1, "body": 2, "eye": 1,
}  # fmt: skip

# Real paragraphs (patient-leaflet and clinical prose) with sentences, words and syllables
# counted by hand (a hyphenated compound is one word, a number one syllable).
HAND_COUNTED = [
    (
        "A mole is a small, coloured spot on the skin. Most people have between 10 and 40 "
        "moles. Most moles are harmless, but a mole that changes shape, size or colour should "
        "be checked by a doctor.",
        (3, 37, 44),
    ),
    (
        "Eczema makes the skin dry, itchy and sore. It often starts in childhood and can come "
        "and go. Using a moisturiser every day and avoiding things that irritate the skin can "
        "help to control it.",
        (3, 35, 51),
    ),
    (
        "Atopic dermatitis is a chronic, relapsing inflammatory skin disease characterised by "
        "intense pruritus and eczematous lesions. It commonly begins in infancy and is "
        "frequently associated with other atopic conditions such as asthma and allergic "
        "rhinitis.",
        (2, 35, 80),
    ),
    (
        "Dermoscopy improves the diagnostic accuracy for pigmented skin lesions compared with "
        "examination by the naked eye. Features such as an atypical pigment network, irregular "
        "streaks and a blue-whitish veil suggest melanoma.",
        (2, 31, 65),
    ),
    (
        "Seborrheic keratoses are common benign epidermal tumours of older adults. They "
        "typically present as well demarcated, stuck-on papules or plaques with a waxy, "
        "verrucous surface and may be confused with melanoma when heavily pigmented.",
        (2, 34, 69),
    ),
    (
        "Wash the area gently with soap and water every day. Keep it covered with a clean "
        "dressing. Do not pick at the scab. Call your doctor if the skin turns red, feels hot, "
        "or starts to hurt more.",
        (4, 38, 47),
    ),
]


def _fk(sentences: int, words: int, syllable_count: int) -> float:
    return 0.39 * words / sentences + 11.8 * syllable_count / words - 15.59


def _fre(sentences: int, words: int, syllable_count: int) -> float:
    return 206.835 - 1.015 * words / sentences - 84.6 * syllable_count / words


@pytest.mark.parametrize(("word", "expected"), DICTIONARY_SYLLABLES.items())
def test_syllables_follow_vowel_groups_and_silent_e(word: str, expected: int) -> None:
    assert syllables(word) == expected


def test_formulas_equal_textstat_where_syllables_are_unambiguous() -> None:
    # one-syllable words only: every syllable counter agrees, so the formulas are compared
    text = (
        "The cat sat on the mat by the door. A dog ran up the hill and back. "
        "Then they both slept in the sun for a long time."
    )
    assert flesch_kincaid_grade(text) == pytest.approx(
        ts_metrics.flesch_kincaid_grade(text, TEXTSTAT_LANG), abs=1e-9
    )
    assert flesch_reading_ease(text) == pytest.approx(
        ts_metrics.flesch_reading_ease(text, TEXTSTAT_LANG), abs=1e-9
    )


@pytest.mark.parametrize(("text", "hand"), HAND_COUNTED)
def test_real_paragraphs_against_textstat_counts_and_hand_counted_syllables(
    text: str, hand: tuple[int, int, int]
) -> None:
    counted = text_counts(text)
    # words and sentences: textstat is the reference
    assert counted.words == ts_counts.count_words(text)
    assert counted.sentences == ts_counts.count_sentences(text)
    # syllables: within 5% of a dictionary count; the grade within 1.5 of the hand-counted one
    assert counted.syllables == pytest.approx(hand[2], rel=0.05)
    assert flesch_kincaid_grade(text) == pytest.approx(_fk(*hand), abs=1.5)
    assert flesch_reading_ease(text) == pytest.approx(_fre(*hand), abs=10)


def test_markdown_is_stripped_and_each_block_ends_a_sentence() -> None:
    markdown = (
        "# A short title\n\n**Bold** words here. More words [with a link](https://x.org).\n\n"
        "- first item\n- second item\n\n| Name | Score |\n| --- | --- |\n| mole | 0.46 |\n"
    )
    plain = (
        "A short title. Bold words here. More words with a link. first item. second item. "
        "Name. Score. mole. 0.46."
    )
    assert text_counts(markdown) == text_counts(plain)
    assert text_counts(markdown).sentences == 9


def test_a_text_without_words_is_refused() -> None:
    with pytest.raises(ValueError, match="no words"):
        flesch_kincaid_grade("## --- \n\n| | |")


# --- the documents --------------------------------------------------------------------------


@pytest.fixture
def better_photo_report(sample_report):
    """The sample report for a blurry photo: no modality, characteristics or differential."""
    return sample_report.model_copy(
        update={
            "status": "needs_better_photo",
            "quality": QualityCheck(
                usable=False,
                problems=[
                    QualityProblem(
                        kind="blurry",
                        message="The photo is blurry. Hold the phone still and take it again.",
                        value=12.0,
                        threshold=60.0,
                    )
                ],
                measures={"sharpness": 12.0},
            ),
            "modality": None,
            "characteristics": [],
            "differential": None,
            "similar_cases": [],
            "information": [],
            "triage": Triage(level="none", advice="Take a new photo in good light."),
        }
    )


def _blocks(markdown: str, kind: str) -> list:
    """The contents of the blocks of one kind, as the PDF renderer parses them."""
    return [content for k, content in parse_markdown(markdown) if k == kind]


def _headings(markdown: str) -> list[str]:
    return [text for _level, text in _blocks(markdown, "heading")]


def _all_documents(report) -> dict[str, str]:
    return {kind: write(report) for kind, write in DOCUMENTS.items()}


def test_report_has_every_section_with_the_findings(sample_report) -> None:
    md = report_markdown(sample_report)
    assert _headings(md) == [
        "Consultation report",
        "Image quality",
        "Modality",
        "Characteristics",
        "Differential",
        "Triage",
        "Similar cases",
        "Information on the candidates",
        "melanoma",
        "Patient details",
        "Limitations",
        "Summary",
    ]
    assert "complete" in md and "sharpness: 310.00" in md and "brightness: 0.55" in md
    assert "dermoscopy" in md and "0.93" in md and "raw zero-shot score" in md
    assert "pigment network (dermoscopy): score 0.71" in md
    assert "blue-whitish veil (dermoscopy): score 0.58" in md
    table = _blocks(md, "table")[0][0]
    assert table[0] == [
        "Rank",
        "Name",
        "ICD-10-CM",
        "Category",
        "Probability",
        "In prediction set",
        "Malignancy",
    ]
    assert table[1] == [
        "1",
        "melanoma",
        "-",  # the fixture's candidates carry no code (codes: tests/test_interop_codes.py)
        "malignant melanocytic lesion",
        "0.46",
        "yes",
        "malignant",
    ]
    assert table[3][1:] == [
        "seborrheic keratosis",
        "-",
        "benign keratinocytic lesion",
        "0.12",
        "no",
        "benign",
    ]
    assert "calibrated (temperature 2.06 fitted on validation images)" in md
    assert "Target coverage 90%" in md and "held-out test split: 91%" in md
    assert "Triage level: **urgent**" in md
    assert "malignant-candidate (urgent): melanoma (malignant) is ranked 1" in md
    assert ["1", "mel", "0.83"] in _blocks(md, "table")[1][0]
    assert "Surgical removal" in md and "Promptly, if a mole is new" in md
    assert "age: 54" in md and "site: back" in md and "change: growing" in md
    assert "mostly trained on lighter skin" in md
    assert "Findings summary." in md and "Written by: template." in md
    assert "This is decision support, not a diagnosis." in md


def test_report_states_context_image_only_differential_and_writer_fallback(sample_report) -> None:
    d = sample_report.differential.model_copy(
        update={
            "context": ["age: 54", "site: back"],
            "image_only": [
                Candidate(
                    rank=1,
                    label="melanocytic nevus",
                    name="melanocytic nevus",
                    node="melanocytic_nevus",
                    probability=0.52,
                ),
            ],
        }
    )
    narrative = sample_report.narrative.model_copy(
        update={"writer": "template", "fallback": "openai:gpt-x did not answer in 30 s"}
    )
    md = report_markdown(
        sample_report.model_copy(
            update={"differential": d, "narrative": narrative, "question": "Is it serious?"}
        )
    )
    assert "Context used" in _headings(md) and "Question" in _headings(md)
    assert "re-weighted the differential: age: 54; site: back" in md
    row = ["1", "melanocytic nevus", "-", "-", "0.52", "no", "unknown"]  # no code, no category
    assert row in _blocks(md, "table")[1][0]
    assert "openai:gpt-x did not answer in 30 s" in md and "Is it serious?" in md


def test_soap_note_has_the_four_parts(sample_report) -> None:
    md = soap_note(sample_report.model_copy(update={"question": "Should I worry?"}))
    assert _headings(md) == [
        "Visit summary (SOAP)",
        "S: Subjective",
        "O: Objective",
        "A: Assessment (model output, not a diagnosis)",
        "P: Plan",
    ]
    subjective, objective, assessment, plan = re.split(r"^## ", md, flags=re.M)[1:]
    assert "age: 54" in subjective and "Question: Should I worry?" in subjective
    assert "lesion.jpg" in objective and "usable" in objective and "dermoscopy" in objective
    assert "pigment network" in objective
    for name, p in (
        ("melanoma", "0.46"),
        ("melanocytic nevus", "0.31"),
        ("seborrheic keratosis", "0.12"),
    ):
        assert f"| {name} |" in assessment and f"| {p} |" in assessment
    assert "calibrated (temperature 2.06" in assessment and "not a diagnosis" in assessment
    assert "Prediction set: melanoma, melanocytic nevus" in assessment
    assert "urgent" in plan and "See a dermatologist promptly" in plan
    assert "malignant-candidate" in plan and "biopsy" in plan and "Surgical removal" in plan


def test_handout_is_plain_and_states_its_reading_level(sample_report) -> None:
    md = patient_handout(sample_report)
    body, last = md.rstrip("\n").rsplit("\n", 1)
    stated = re.fullmatch(r"Reading level: about grade (\d+) \(Flesch-Kincaid\)\.", last)
    assert stated, last
    grade = int(stated.group(1))
    assert grade <= 8
    assert grade == max(1, round(flesch_kincaid_grade(body)))  # measured on its own text
    assert grade == pytest.approx(ts_metrics.flesch_kincaid_grade(body, TEXTSTAT_LANG), abs=1.5)
    assert "the computer model's leading possibilities" in md
    for name, percent in (
        ("melanoma", 46),
        ("melanocytic nevus", 31),
        ("seborrheic keratosis", 12),
    ):
        assert f"### {name}\n\nThe model gave this {percent} out of 100." in md
    assert "What it is: A skin cancer that starts in pigment cells." in md
    assert "When to get care: Promptly, if a mole is new, changing or bleeding." in md
    assert "See a dermatologist promptly (within 2 weeks)." in md
    assert "This is decision support, not a diagnosis." in md
    assert "calibrated" not in md and "0.46" not in md  # no jargon, no raw probabilities


def test_handout_says_when_scores_are_not_chances(sample_report) -> None:
    d = sample_report.differential.model_copy(
        update={"calibrated": False, "probability_kind": "raw softmax score (uncalibrated)"}
    )
    md = patient_handout(sample_report.model_copy(update={"differential": d}))
    assert "rough scores" in md and "not chances" in md


def test_referral_letter(sample_report) -> None:
    md = referral_letter(
        sample_report,
        referrer="Dr A. Jones, Riverside Practice",
        recipient="Dr B. Smith, Dermatology",
    )
    assert _headings(md) == [
        "Referral to dermatology",
        "Reason for referral",
        "Findings",
        "Differential (model output)",
        "Patient details",
        "Attachments",
    ]
    assert "To: Dr B. Smith, Dermatology" in md and "From: Dr A. Jones" in md
    assert md.rstrip().endswith("Dr A. Jones, Riverside Practice")
    reason = md.split("## Reason for referral")[1].split("## Findings")[0]
    assert "**urgent**" in reason and "malignant-candidate" in reason
    assert "| melanoma |" in md and "| 0.46 |" in md and "| 0.31 |" in md
    assert "age: 54" in md and "lesion.jpg" in md and "report.json" in md
    assert "This is decision support, not a diagnosis." in md
    plain = referral_letter(sample_report)
    assert "To: Dermatology service" in plain and "The referring clinician" in plain


def test_no_document_states_a_diagnosis_as_certain(sample_report, better_photo_report) -> None:
    for report in (sample_report, better_photo_report):
        for kind, md in _all_documents(report).items():
            assert not CERTAINTY.search(md), (kind, CERTAINTY.search(md))
            assert report.disclaimer in md, kind


def test_documents_for_a_photo_that_needs_replacing(better_photo_report) -> None:
    docs = _all_documents(better_photo_report)
    assert "needs a better photo" in docs["report"]
    assert "blurry: The photo is blurry. Hold the phone still" in docs["report"]
    assert "(measured 12.00, limit 60.00)" in docs["report"]
    assert "Not assessed: a better photo is needed." in docs["soap"]
    assert "Take a new, sharp, well-lit photo" in docs["soap"]
    assert "could not use the photo" in docs["handout"]
    assert "Hold the phone still" in docs["handout"]
    assert "a better photo is needed" in docs["referral"]
    for kind, md in docs.items():
        assert not _blocks(md, "table") and "melanoma" not in md, kind  # no differential
    assert patient_handout(better_photo_report).rstrip().endswith("(Flesch-Kincaid).")


def test_patient_details_and_missing_information(sample_report) -> None:
    report = sample_report.model_copy(
        update={
            "patient": PatientDetails(sex="female", itch=True, notes=["it appeared after a burn"]),
            "information": [
                ConditionInfo(
                    node="melanocytic_nevus",
                    name="melanocytic nevus",
                    what_it_is="A common mole.",
                    usual_course="Stays the same.",
                    treatments="Usually none.",
                    when_to_seek_care="If it changes.",
                    source="melanocytic_nevus",
                ),
            ],
        }
    )
    md = report_markdown(report)
    assert "sex: female" in md and "itch: yes" in md and "Note: it appeared after a burn" in md
    handout = patient_handout(report)
    nevus = handout.split("### melanocytic nevus")[1].split("###")[0]
    assert "A common mole." in nevus and "If it changes." in nevus
    assert "What it is" not in handout.split("### melanoma")[1].split("###")[0]
    empty = report_markdown(sample_report.model_copy(update={"patient": PatientDetails()}))
    assert "## Patient details\n\nNone given." in empty


# --- PDF and files --------------------------------------------------------------------------


def _pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_pdf_renders_every_block_and_unicode(tmp_path: Path) -> None:
    unicode = "naevus \u2013 café-au-lait ≥ 5 mm"
    markdown = (
        f"# {unicode.capitalize()}\n\n"
        "A paragraph with **bold** text and a double -- dash and __underscores__.\n\n"
        "- first point\n- second point with ≥ sign\n\n"
        "| Rank | Name | Probability |\n| --- | --- | --- |\n"
        f"| 1 | {unicode} | 0.46 |\n| 2 | a \\| pipe | 0.31 |\n\n"
        "### Small heading\n\nLast line.\n"
    )
    path = markdown_to_pdf(markdown, tmp_path / "out.pdf")
    assert path == tmp_path / "out.pdf"
    text = _squash(_pdf_text(path))
    for expected in (
        unicode.capitalize(),
        "A paragraph with bold text and a double -- dash and __underscores__.",
        "first point",
        "second point with ≥ sign",
        unicode,
        "0.46",
        "a | pipe",
        "Small heading",
        "Last line.",
    ):
        assert expected in text, expected
    assert "**" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["out.pdf"]  # no temporary file left


def test_document_pdfs_keep_non_latin_1_text(sample_report, tmp_path: Path) -> None:
    name = "naevus \u2013 café-au-lait ≥ 2"
    d = sample_report.differential
    second = d.candidates[1].model_copy(update={"name": name})
    report = sample_report.model_copy(
        update={
            "differential": d.model_copy(update={"candidates": [d.candidates[0], second]}),
            "patient": PatientDetails(notes=["Ärztin sagte: „beobachten“"]),
        }
    )
    for kind in ("report", "referral", "handout"):
        text = _squash(_pdf_text(markdown_to_pdf(DOCUMENTS[kind](report), tmp_path / kind)))
        assert name in text, kind
    assert "Ärztin sagte: „beobachten“" in _squash(_pdf_text(tmp_path / "report"))


def test_pdf_of_a_long_table_spans_pages(tmp_path: Path) -> None:
    rows = "".join(f"| {i} | condition number {i} | 0.{i:02d} |\n" for i in range(120))
    path = markdown_to_pdf(
        "# Long\n\n| Rank | Name | P |\n| --- | --- | --- |\n" + rows, tmp_path / "l.pdf"
    )
    reader = PdfReader(path)
    assert len(reader.pages) > 1
    assert "condition number 119" in _pdf_text(path)


def test_write_documents_writes_markdown_pdf_and_json(sample_report, tmp_path: Path) -> None:
    folder = tmp_path / "new" / "case-0001"
    written = write_documents(sample_report, folder)
    assert sorted(written) == sorted(
        [f"{k}.{f}" for k in ("report", "soap", "handout", "referral") for f in ("md", "pdf")]
        + ["report.json"]
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(written)
    assert written["report.md"].read_text(encoding="utf-8") == report_markdown(sample_report)
    assert (
        type(sample_report).model_validate_json(written["report.json"].read_text(encoding="utf-8"))
        == sample_report
    )
    for kind in DOCUMENTS:
        text = _squash(_pdf_text(written[f"{kind}.pdf"]))
        assert "melanoma" in text and "This is decision support, not a diagnosis." in text, kind
    assert "0.46" in _squash(_pdf_text(written["report.pdf"]))
    assert "46 out of 100" in _squash(_pdf_text(written["handout.pdf"]))


def test_write_documents_never_overwrites_silently(sample_report, tmp_path: Path) -> None:
    (tmp_path / "soap.pdf").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"soap\.pdf"):
        write_documents(sample_report, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["soap.pdf"]  # nothing written
    assert (tmp_path / "soap.pdf").read_bytes() == b"keep me"
    written = write_documents(
        sample_report, tmp_path, kinds=["soap"], formats=["pdf"], overwrite=True
    )
    assert sorted(written) == ["report.json", "soap.pdf"]
    assert PdfReader(written["soap.pdf"]).pages


def test_write_documents_selects_kinds_and_refuses_unknown_ones(sample_report, tmp_path) -> None:
    written = write_documents(sample_report, tmp_path, kinds=["handout"], formats=["md"])
    assert sorted(written) == ["handout.md", "report.json"]
    with pytest.raises(ValueError, match="letter"):
        write_documents(sample_report, tmp_path / "x", kinds=["letter"])
    with pytest.raises(ValueError, match="docx"):
        write_documents(sample_report, tmp_path / "x", formats=["docx"])
    assert not (tmp_path / "x").exists()


def test_texts_file_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    texts = document_texts()
    assert texts.data["version"] == "2026.11.0" and texts.data["schema_version"] == 1
    broken = tmp_path / "documents.yaml"
    broken.write_text('schema_version: 1\nversion: "x"\nreport:\n  title: "Report {missing}"\n')
    custom = document_texts(broken)
    with pytest.raises(KnowledgeError, match=r"documents\.yaml.*report\.title.*missing"):
        custom.text("report.title")
    with pytest.raises(KnowledgeError, match=r"documents\.yaml.*report.*'meta'"):
        custom.text("report.meta")
    broken.write_text("schema_version: 2\n")
    with pytest.raises(KnowledgeError, match="schema_version"):
        document_texts(broken)
