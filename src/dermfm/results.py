"""Result types shared by the CLI's ``--json``, the REST API and the assistant.

Every result is a plain dataclass with ``to_dict()``; the JSON schema is documented in
``docs/results.md``. Scores say what they are: ``score_kind`` names how they were computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: ``score_kind`` of probabilities that come from an adapter (:mod:`dermfm.adapters`): blended
#: with zero-shot and temperature-calibrated on the adapter's validation split.
ADAPTER_SCORE_KIND = "adapter-calibrated"


@dataclass
class Prediction:
    """One class of a differential, with its (uncalibrated) probability and, when its ontology
    node has one, its ICD-10-CM code."""

    label: str
    name: str
    node: str | None
    probability: float
    icd10cm: str | None = None


@dataclass
class RollupEntry:
    """Probability mass of an ontology node: the sum over the classes below it."""

    node: str
    name: str
    depth: int
    probability: float


@dataclass
class Diagnosis:
    """Differential diagnosis of one image (``error`` set when it could not be read): zero-shot,
    or from an adapter when ``adapter`` names one (``score_kind`` says which)."""

    source: str
    model: str
    label_set: str
    predictions: list[Prediction] = field(default_factory=list)
    rollup: list[RollupEntry] = field(default_factory=list)
    malignancy: dict[str, float] = field(default_factory=dict)
    urgency: dict[str, float] = field(default_factory=dict)
    entropy: float | None = None
    margin: float | None = None
    temperature: float | None = None
    score_kind: str = "uncalibrated softmax over the label set"
    suppressed: list[str] = field(default_factory=list)
    #: the adapter whose calibrated scores these are (``None``: zero-shot scores)
    adapter: str | None = None
    #: whether the image embedding averaged the test-time augmentation views
    tta: bool = False
    #: whether the image was decoded at a reduced JPEG scale (``False``: full resolution, the
    #: reference decode)
    fast_decode: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was diagnosed."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


@dataclass
class ConceptScore:
    """A concept's MONET score for one image and whether it passes the threshold."""

    id: str
    name: str
    group: str
    score: float
    present: bool


@dataclass
class ConceptAnnotation:
    """Concept scores of one image (``error`` set when it could not be read)."""

    source: str
    model: str
    scores: list[ConceptScore] = field(default_factory=list)
    threshold: float = 0.5
    score_kind: str = "raw MONET concept score (uncalibrated)"
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was annotated."""
        return self.error is None

    def present(self) -> list[ConceptScore]:
        """Concepts at or above the threshold, highest score first."""
        return sorted((s for s in self.scores if s.present), key=lambda s: -s.score)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


@dataclass
class SearchHit:
    """One retrieved item of an :class:`~dermfm.retrieval.Index`."""

    rank: int
    item_id: int
    path: str
    score: float
    label: str | None = None
    caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)
