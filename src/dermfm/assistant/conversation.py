"""Multi-turn consultations about a case, and the store that keeps each case's history.

A case is one image with everything said about it: the patient details gathered so far, every
message, and every version of the report (a new version whenever something the user says
changes the findings, e.g. age, body site or a reported change re-weighting the differential).
:class:`CaseStore` keeps cases as folders (``<root>/<case id>/case.json`` plus a copy of the
image, so a case stays complete when the original file moves); writes are atomic and a stored
case is never overwritten by a different one.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dermfm.assistant.consult import Assistant
from dermfm.assistant.report import (
    ConsultReport,
    DicomReference,
    Message,
    PatientDetails,
    now,
)
from dermfm.errors import DermfmError
from dermfm.io import DicomFrame, ImageInput, is_dicom, load_image

#: Patient fields that change the findings (the differential's prompts, triage rules or the
#: limitations); other details only change the conversation.
REPORT_FIELDS = frozenset(
    {
        "age",
        "sex",
        "site",
        "evolution",
        "history",
        "bleeding",
        "itch",
        "pain",
        "skin_type",
        "modality",
    }
)


class CaseError(DermfmError):
    """A case that does not exist or cannot be read or written."""


class Case(BaseModel):
    """Everything about one consultation."""

    model_config = ConfigDict(extra="forbid")

    case_id: str
    created: str = Field(default_factory=now)
    source: str = Field(description="the image as the user gave it")
    image: str | None = Field(None, description="file name of the stored copy of the image")
    patient: PatientDetails = Field(default_factory=PatientDetails)
    messages: list[Message] = Field(default_factory=list)
    reports: list[ConsultReport] = Field(default_factory=list)

    @property
    def report(self) -> ConsultReport:
        """The latest report."""
        if not self.reports:
            raise CaseError(f"case {self.case_id}: no report yet")
        return self.reports[-1]


def default_case_root() -> Path:
    """``$DERMFM_CASES`` or ``~/.dermfm/cases``."""
    return Path(os.environ.get("DERMFM_CASES") or Path.home() / ".dermfm" / "cases")


class CaseStore:
    """Cases as folders under ``root`` (see the module doc)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_case_root()

    def folder(self, case_id: str) -> Path:
        """The folder of a case (ids are hex strings: no path tricks)."""
        if not case_id or not all(c in "0123456789abcdef-" for c in case_id):
            raise CaseError(f"{case_id!r} is not a case id")
        return self.root / case_id

    def new_id(self) -> str:
        """A fresh case id."""
        return uuid.uuid4().hex[:12]

    def store_image(self, case_id: str, image: ImageInput) -> str | None:
        """Copy an image file into the case folder; returns the copy's file name. A DICOM image
        (or frame) is kept as its pixels alone (``image.png``): none of its tags is stored."""
        from dermfm.cache import atomic_write_bytes

        dicom = isinstance(image, DicomFrame) or (isinstance(image, str | Path) and is_dicom(image))
        if not dicom and (not isinstance(image, str | Path) or not Path(image).is_file()):
            return None
        name = "image.png" if dicom else "image" + Path(image).suffix.lower()  # type: ignore[arg-type]
        target = self.folder(case_id) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if dicom:
            buffer = io.BytesIO()
            load_image(image).save(buffer, format="PNG")
            atomic_write_bytes(target, buffer.getvalue())
        else:
            atomic_write_bytes(target, Path(image).read_bytes())  # type: ignore[arg-type]
        return name

    def image_path(self, case: Case) -> Path | None:
        """The stored copy of a case's image."""
        return self.folder(case.case_id) / case.image if case.image else None

    def save(self, case: Case) -> Path:
        """Write ``case.json`` atomically. A stored case may only grow: saving a case whose
        history does not start with the stored one's raises :class:`CaseError`."""
        from dermfm.cache import atomic_write_bytes

        file = self.folder(case.case_id) / "case.json"
        if file.is_file():
            stored = self.load(case.case_id)
            same = (
                stored.source == case.source
                and case.messages[: len(stored.messages)] == stored.messages
                and len(case.reports) >= len(stored.reports)
            )
            if not same:
                raise CaseError(f"{file}: a different case is stored under this id")
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(file, case.model_dump_json(indent=2).encode("utf-8"))
        return file

    def load(self, case_id: str) -> Case:
        """Read a stored case; :class:`CaseError` naming the file when missing or damaged."""
        file = self.folder(case_id) / "case.json"
        try:
            return Case.model_validate_json(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CaseError(f"{file}: no such case") from exc
        except ValueError as exc:
            raise CaseError(f"{file}: not a valid case ({exc})") from exc

    def list(self) -> list[Case]:
        """Every readable stored case, newest first (damaged ones are skipped, not deleted)."""
        cases = []
        for file in sorted(self.root.glob("*/case.json")):
            try:
                cases.append(self.load(file.parent.name))
            except CaseError:
                continue
        return sorted(cases, key=lambda c: c.created, reverse=True)


@dataclass
class Reply:
    """The assistant's answer to one message."""

    answer: str
    changed: list[str] = field(default_factory=list)
    report_updated: bool = False
    report: ConsultReport | None = None


class Consultation:
    """A conversation about one case.

    Start one with :meth:`start` (consults the image) or :meth:`resume` (a stored case); then
    :meth:`ask` for each user message. With a store, the case is saved after every turn.
    """

    def __init__(self, assistant: Assistant, case: Case, store: CaseStore | None = None) -> None:
        self.assistant = assistant
        self.case = case
        self.store = store

    @classmethod
    def start(
        cls,
        assistant: Assistant,
        image: ImageInput,
        patient: PatientDetails | None = None,
        question: str | None = None,
        store: CaseStore | None = None,
        source: str | None = None,
        dicom: DicomReference | None = None,
    ) -> Consultation:
        """Consult the image and open its case (saved when a store is given). ``source`` names
        the image in the case (default: its path). A DICOM image's patient context (age, sex,
        site, modality) joins the case's patient details, and its :class:`DicomReference` (or
        ``dicom``, for an upload stored without its tags) every report; the case keeps its
        pixels only."""
        from dermfm.assistant.dicom import reference_of, with_dicom

        case_id = store.new_id() if store else uuid.uuid4().hex[:12]
        source = source or (str(image) if isinstance(image, str | Path | DicomFrame) else "<image>")
        context, reference = reference_of(image)
        stored = store.store_image(case_id, image) if store else None
        case = Case(
            case_id=case_id, source=source, image=stored, patient=with_dicom(patient, context)
        )
        consultation = cls(assistant, case, store)
        if question:
            case.messages.append(Message(role="user", content=question))
        report = assistant.consult(
            consultation._image(), question, case.patient, case_id=case_id, dicom=reference or dicom
        )
        case.reports.append(report)
        if question and report.narrative.answer:
            case.messages.append(Message(role="assistant", content=report.narrative.answer))
        consultation._save()
        return consultation

    @classmethod
    def resume(cls, assistant: Assistant, case_id: str, store: CaseStore) -> Consultation:
        """Continue a stored case."""
        return cls(assistant, store.load(case_id), store)

    @property
    def report(self) -> ConsultReport:
        """The latest report of the case."""
        return self.case.report

    @property
    def history(self) -> list[Message]:
        """Every message so far."""
        return list(self.case.messages)

    def _image(self) -> ImageInput:
        """The stored copy of the case's image; the image as the user gave it (``source``) only
        for a case without a stored copy. A stored copy that has gone missing is an error, never
        a reason to open ``source``: for a server that is a name the client chose."""
        if self.case.image is None or self.store is None:
            return self.case.source
        stored = self.store.image_path(self.case)
        if stored is None or not stored.is_file():
            raise CaseError(f"case {self.case.case_id}: its stored image {self.case.image} is gone")
        return stored

    def _dicom(self) -> DicomReference | None:
        """The DICOM reference of the case's image (from its first report), if it was DICOM."""
        return self.case.reports[0].dicom if self.case.reports else None

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(self.case)

    def update(self, patient: PatientDetails) -> bool:
        """Replace the patient details (e.g. from a form); the report is recomputed when a
        field that changes the findings changed. Returns whether it was."""
        old = self.case.patient
        changed = {f for f in REPORT_FIELDS if getattr(old, f) != getattr(patient, f)}
        self.case.patient = patient
        if changed:
            self.case.reports.append(
                self.assistant.consult(
                    self._image(),
                    None,
                    patient,
                    case_id=self.case.case_id,
                    history=self.case.messages,
                    dicom=self._dicom(),
                )
            )
        self._save()
        return bool(changed)

    def ask(self, text: str) -> Reply:
        """Answer one message. Patient details in it are recorded; when they change the
        findings the report is recomputed (a new version is kept, the old ones stay)."""
        from dermfm.assistant.patient import parse_details
        from dermfm.assistant.writers import write_narrative

        text = text.strip()
        if not text:
            raise ValueError("empty message")
        history: Sequence[Message] = list(self.case.messages)
        patient, changed = parse_details(text, self.case.patient)
        self.case.patient = patient
        self.case.messages.append(Message(role="user", content=text))
        updated = bool(REPORT_FIELDS & set(changed))
        if updated:
            report = self.assistant.consult(
                self._image(),
                text,
                patient,
                case_id=self.case.case_id,
                history=history,
                dicom=self._dicom(),
            )
            self.case.reports.append(report)
            narrative = report.narrative
        else:
            report = self.case.report.model_copy(update={"patient": patient})
            narrative = write_narrative(self.assistant.writer, report, text, history)
        answer = narrative.answer or narrative.summary
        if narrative.fallback:
            answer += f"\n\n(Note: {narrative.fallback})"
        self.case.messages.append(Message(role="assistant", content=answer))
        self._save()
        return Reply(
            answer=answer, changed=changed, report_updated=updated, report=self.case.report
        )


__all__ = [
    "REPORT_FIELDS",
    "Case",
    "CaseError",
    "CaseStore",
    "Consultation",
    "Reply",
    "default_case_root",
]
