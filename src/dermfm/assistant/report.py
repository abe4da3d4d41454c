"""The consultation report: one typed, JSON-serialisable structure (pydantic) shared by the
assistant, its writers and documents, the CLI's ``--json`` and the REST API.

The JSON schema is ``ConsultReport.model_json_schema()`` (``dermfm consult --schema`` prints it).
Every number says what it is: probabilities are either calibrated (temperature fitted on a
held-out split, stored with the model) or labelled raw scores; the prediction set states the
coverage it was calibrated for and the coverage measured on a test split.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Version of the report layout; bumped when a field changes meaning or disappears.
SCHEMA_VERSION = 1

#: Triage levels, least to most pressing (the ontology's urgency values, plus ``none``).
URGENCY_LEVELS: tuple[str, ...] = ("none", "routine", "soon", "urgent", "emergency")

Urgency = Literal["none", "routine", "soon", "urgent", "emergency"]


def percent(p: float) -> str:
    """A probability as a rounded percentage that never reads as certain (``>99%``, ``<1%``)."""
    if p >= 0.995:
        return ">99%"
    if p < 0.005:
        return "<1%"
    return f"{round(p * 100)}%"


def now() -> str:
    """The current UTC time as an ISO 8601 string (report and message timestamps)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QualityProblem(_Model):
    """One reason the photo cannot be assessed as it is."""

    kind: Literal[
        "unreadable",
        "too_small",
        "blank",
        "greyscale",
        "blurry",
        "underexposed",
        "overexposed",
        "not_skin",
    ]
    message: str = Field(description="plain-language explanation, with what to do instead")
    value: float | None = Field(None, description="the measured value, when there is one")
    threshold: float | None = Field(None, description="the limit it was compared with")


class QualityCheck(_Model):
    """Image quality and relevance: is this a usable photo of skin?"""

    usable: bool
    problems: list[QualityProblem] = Field(default_factory=list)
    measures: dict[str, float] = Field(
        default_factory=dict,
        description="sharpness (variance of the Laplacian), brightness (mean 0..1), dark and "
        "bright clipped fractions, contrast (pixel std), saturation (mean HSV saturation), "
        "min_side (pixels), relevance (mean cosine similarity of ImageNet features to the k "
        "nearest reference skin photos)",
    )
    relevance_checked: bool = Field(
        False, description="whether the photo was checked against reference skin photos"
    )


class Modality(_Model):
    """Dermoscopy or clinical photograph, as the model judges it."""

    label: Literal["dermoscopy", "clinical"]
    probability: float
    given: bool = Field(False, description="stated by the user rather than inferred")
    score_kind: str = "raw zero-shot score (uncalibrated)"


class Characteristic(_Model):
    """A clinical or dermoscopic concept scored on the image (MONET score)."""

    id: str
    name: str
    group: str
    score: float
    present: bool


class Candidate(_Model):
    """One diagnosis of the differential."""

    rank: int
    label: str
    name: str
    node: str | None
    probability: float
    in_prediction_set: bool = False
    malignancy: str = "unknown"
    urgency: str = "unknown"
    category: str | None = Field(None, description="name of the ontology category above it")
    icd10cm: str | None = Field(None, description="ICD-10-CM code of the condition, if it has one")


class CategoryScore(_Model):
    """Probability mass of an ontology category (sum over the classes below it)."""

    node: str
    name: str
    depth: int
    probability: float


class PredictionSet(_Model):
    """A conformal prediction set: contains the true diagnosis with the stated coverage on
    images like the calibration split (exchangeability), not a guarantee for one image."""

    labels: list[str]
    names: list[str]
    codes: list[str | None] = Field(
        default_factory=list, description="ICD-10-CM code of each member (null: none)"
    )
    coverage: float = Field(description="target coverage it was calibrated for, e.g. 0.9")
    measured_coverage: float | None = Field(
        None, description="coverage measured on a held-out test split"
    )
    method: str
    calibrated_on: str


class Differential(_Model):
    """Category and ranked differential over the label set."""

    label_set: str
    candidates: list[Candidate]
    categories: list[CategoryScore] = Field(default_factory=list)
    malignancy: dict[str, float] = Field(default_factory=dict)
    probability_kind: str
    calibrated: bool
    score_kind: Literal["raw", "calibrated", "adapter-calibrated"] = Field(
        "raw",
        description="raw zero-shot softmax, zero-shot calibrated by the assistant's "
        "calibration, or an adapter's calibrated probabilities",
    )
    adapter: str | None = Field(None, description="the adapter the probabilities came from")
    prediction_set: PredictionSet | None = None
    context: list[str] = Field(
        default_factory=list,
        description="patient details that re-weighted the differential through text prompts",
    )
    image_only: list[Candidate] | None = Field(
        None, description="the differential from the image alone, when context changed it"
    )


class RuleHit(_Model):
    """A safety rule that fired, with why."""

    rule: str
    level: Urgency
    reason: str
    advice: str


class Triage(_Model):
    """Urgency from explicit rules (the most pressing rule that fired wins)."""

    level: Urgency
    fired: list[RuleHit] = Field(default_factory=list)
    advice: str


class SimilarCase(_Model):
    """A reference case from the case index."""

    rank: int
    path: str
    label: str | None = None
    caption: str | None = None
    similarity: float


class ConditionInfo(_Model):
    """Plain-language information on a leading candidate, from the knowledge base."""

    node: str
    name: str
    what_it_is: str
    usual_course: str
    treatments: str = Field(description="kinds of treatment a clinician may consider; no doses")
    when_to_seek_care: str
    source: str = Field(description="knowledge-base entry used (the node or a broader category)")


class Limitation(_Model):
    """Something about this image or this model that limits what the report can say."""

    kind: str
    message: str


class PatientDetails(_Model):
    """What the user told the assistant about the patient and the lesion."""

    age: int | None = None
    sex: Literal["female", "male"] | None = None
    site: str | None = None
    duration: str | None = None
    itch: bool | None = None
    pain: bool | None = None
    bleeding: bool | None = None
    evolution: list[str] = Field(
        default_factory=list, description="reported change: growing, changing colour, ..."
    )
    history: list[str] = Field(
        default_factory=list, description="relevant history: previous skin cancer, ..."
    )
    skin_type: str | None = Field(None, description="Fitzpatrick skin type I-VI when given")
    modality: Literal["dermoscopy", "clinical"] | None = None
    notes: list[str] = Field(default_factory=list, description="other things said, verbatim")

    def context_phrases(self) -> list[str]:
        """The details as short phrases (``site: back``), for reports and prompts."""
        out = []
        for name in ("age", "sex", "site", "duration", "skin_type"):
            value = getattr(self, name)
            if value is not None:
                out.append(f"{name.replace('_', ' ')}: {value}")
        for name in ("itch", "pain", "bleeding"):
            value = getattr(self, name)
            if value is not None:
                out.append(f"{name}: {'yes' if value else 'no'}")
        if self.evolution:
            out.append("change: " + ", ".join(e.replace("_", " ") for e in self.evolution))
        if self.history:
            out.append("history: " + ", ".join(h.replace("_", " ") for h in self.history))
        return out


class DicomReference(_Model):
    """The DICOM object a report is about: what links its results back to the study in a PACS
    (DICOM SR, encapsulated PDF, FHIR ImagingStudy). UIDs only: no name, id or date."""

    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None
    sop_class_uid: str | None = None
    sop_class: str | None = Field(None, description="name of the SOP class")
    frame: int | None = Field(None, description="frame number (from 1) of a multi-frame object")
    frames: int = Field(1, description="number of frames of the object")


class Narrative(_Model):
    """Text written from the findings (never adds findings of its own)."""

    summary: str
    answer: str | None = None
    writer: str = Field(description="which writer produced it (template, openai:MODEL, ...)")
    fallback: str | None = Field(
        None, description="why the template writer was used instead of the configured one"
    )


class Message(_Model):
    """One turn of a consultation."""

    role: Literal["user", "assistant"]
    content: str
    time: str = Field(default_factory=now)


class ConsultReport(_Model):
    """The structured result of a consultation about one image."""

    schema_version: int = SCHEMA_VERSION
    case_id: str
    created: str = Field(default_factory=now)
    source: str
    image_sha256: str | None = None
    model: str
    status: Literal["complete", "needs_better_photo"]
    question: str | None = None
    quality: QualityCheck
    modality: Modality | None = None
    characteristics: list[Characteristic] = Field(default_factory=list)
    differential: Differential | None = None
    triage: Triage
    similar_cases: list[SimilarCase] = Field(default_factory=list)
    information: list[ConditionInfo] = Field(default_factory=list)
    limitations: list[Limitation] = Field(default_factory=list)
    patient: PatientDetails = Field(default_factory=PatientDetails)
    dicom: DicomReference | None = Field(
        None, description="the DICOM object the image came from, when it was DICOM"
    )
    narrative: Narrative
    disclaimer: str

    def findings(self) -> dict[str, Any]:
        """What a writer may use: the decided findings, without the narrative or file paths."""
        return self.model_dump(
            mode="json",
            exclude={
                "narrative": True,
                "source": True,
                "image_sha256": True,
                "dicom": True,
                "similar_cases": {"__all__": {"path"}},
            },
        )

    def allowed_diagnoses(self) -> list[Candidate]:
        """The candidates a writer may name (the differential shown in the report)."""
        return list(self.differential.candidates) if self.differential else []


__all__ = [
    "SCHEMA_VERSION",
    "URGENCY_LEVELS",
    "Candidate",
    "CategoryScore",
    "Characteristic",
    "ConditionInfo",
    "ConsultReport",
    "DicomReference",
    "Differential",
    "Limitation",
    "Message",
    "Modality",
    "Narrative",
    "PatientDetails",
    "PredictionSet",
    "QualityCheck",
    "QualityProblem",
    "RuleHit",
    "SimilarCase",
    "Triage",
    "Urgency",
    "now",
    "percent",
]
