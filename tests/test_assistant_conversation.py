"""Multi-turn consultations: details the user gives update the report, answers use the findings,
each case keeps its whole history in the case store, and a stored case is never lost."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dermfm.assistant.consult import Assistant
from dermfm.assistant.conversation import CaseError, CaseStore, Consultation


@pytest.fixture(scope="module")
def assistant() -> Assistant:
    return Assistant()


@pytest.fixture(scope="module")
def lesion(shared_data: Path) -> Path:
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["label"] == "bcc")
    return shared_data / "ham10000" / row["file"]


def test_details_update_the_report_and_history_is_kept(assistant, lesion, tmp_path) -> None:
    store = CaseStore(tmp_path / "cases")
    chat = Consultation.start(assistant, lesion, store=store)
    first = chat.report
    assert first.differential.context == []

    reply = chat.ask(
        "I am a 72 year old woman. It is on my face and has been growing for 3 months."
    )
    assert {"age", "sex", "site", "evolution", "duration"} <= set(reply.changed)
    assert reply.report_updated
    assert len(chat.case.reports) == 2
    updated = chat.report
    assert updated.patient.age == 72 and updated.patient.site == "face"
    assert updated.differential.context  # the details went into the prompts
    assert updated.differential.image_only is not None
    assert reply.answer

    reply = chat.ask("What should we do now?")
    assert not reply.report_updated and reply.changed == []
    assert len(chat.case.reports) == 2
    assert updated.triage.advice.split(".")[0].lower() in reply.answer.lower() or reply.answer

    # the case on disk has every message and both report versions, and the image copy
    stored = store.load(chat.case.case_id)
    assert [m.role for m in stored.messages] == ["user", "assistant"] * 2
    assert stored.messages[0].content.startswith("I am a 72")
    assert len(stored.reports) == 2 and stored.reports[0] == first
    copy = store.image_path(stored)
    assert copy is not None and copy.read_bytes() == lesion.read_bytes()

    # resume from the store: the conversation goes on where it stopped
    resumed = Consultation.resume(assistant, chat.case.case_id, store)
    resumed.ask("No bleeding, and no family history.")
    again = store.load(chat.case.case_id)
    assert len(again.messages) == 6
    assert again.patient.age == 72 and again.patient.bleeding is False


def test_store_never_replaces_a_case_with_a_different_one(assistant, lesion, tmp_path) -> None:
    store = CaseStore(tmp_path)
    chat = Consultation.start(assistant, lesion, store=store)
    chat.ask("It itches a lot.")
    other = chat.case.model_copy(update={"messages": chat.case.messages[:1]})
    with pytest.raises(CaseError, match="different case"):
        store.save(other)
    assert len(store.load(chat.case.case_id).messages) == 2


def test_damaged_cases_are_reported_and_skipped_not_deleted(assistant, lesion, tmp_path) -> None:
    store = CaseStore(tmp_path)
    good = Consultation.start(assistant, lesion, store=store)
    broken = tmp_path / "abcdef123456" / "case.json"
    broken.parent.mkdir()
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(CaseError, match=r"case\.json"):
        store.load("abcdef123456")
    assert [c.case_id for c in store.list()] == [good.case.case_id]
    assert broken.read_text(encoding="utf-8") == "{not json"
    with pytest.raises(CaseError, match="not a case id"):
        store.load("../etc")
