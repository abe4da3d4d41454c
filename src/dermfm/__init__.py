"""dermfm: dermatology vision-language foundation models as one toolkit.

The public API (everything the CLI, the server and the assistant call)::

    import dermfm
    model = dermfm.load_model("dermlip-vit-b16")          # or a path, an hf-hub: id, None
    dx = dermfm.diagnose("lesion.jpg", model=model, labels="ham7")
    concepts = dermfm.annotate_concepts("lesion.jpg", model=model)
    index, report = dermfm.Index.build("cases.idx", "photos/", model=model)
    hits = index.search("blue-whitish veil", k=5)
    report = dermfm.consult("lesion.jpg", "Should I worry?")   # grounded assistant report
    adapter = dermfm.load_adapter("clinic.safetensors")        # fitted with `dermfm adapt`
    dx = dermfm.diagnose("lesion.jpg", labels=adapter.label_set, adapter=adapter)

Heavy libraries (torch, open_clip, transformers, faiss) load on first use, so importing dermfm and
``dermfm --help`` stay fast. dermfm supports clinicians; it does not make diagnoses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "dermfm.models",
    "list_models": "dermfm.models",
    "DermModel": "dermfm.models",
    "diagnose": "dermfm.zeroshot",
    "ZeroShotClassifier": "dermfm.zeroshot",
    "Adapter": "dermfm.adapters",
    "fit_adapter": "dermfm.adapters",
    "load_adapter": "dermfm.adapters",
    "annotate_concepts": "dermfm.concepts",
    "ConceptAnnotator": "dermfm.concepts",
    "Index": "dermfm.retrieval",
    "consult": "dermfm.assistant",
    "ConsultReport": "dermfm.assistant",
    "load_image": "dermfm.io",
    "load_ontology": "dermfm.knowledge",
    "load_label_set": "dermfm.knowledge",
    "load_concepts": "dermfm.knowledge",
    "Diagnosis": "dermfm.results",
    "Prediction": "dermfm.results",
    "RollupEntry": "dermfm.results",
    "ConceptAnnotation": "dermfm.results",
    "ConceptScore": "dermfm.results",
    "SearchHit": "dermfm.results",
    "DermfmError": "dermfm.errors",
    "ImageError": "dermfm.errors",
    "ModelNotAvailableError": "dermfm.errors",
    "ModelNotSupportedError": "dermfm.errors",
}

__all__ = [
    "Adapter",
    "ConceptAnnotation",
    "ConceptAnnotator",
    "ConceptScore",
    "ConsultReport",
    "DermModel",
    "DermfmError",
    "Diagnosis",
    "ImageError",
    "Index",
    "ModelNotAvailableError",
    "ModelNotSupportedError",
    "Prediction",
    "RollupEntry",
    "SearchHit",
    "ZeroShotClassifier",
    "__version__",
    "annotate_concepts",
    "consult",
    "diagnose",
    "fit_adapter",
    "list_models",
    "load_adapter",
    "load_concepts",
    "load_image",
    "load_label_set",
    "load_model",
    "load_ontology",
]

if TYPE_CHECKING:
    from dermfm.adapters import Adapter, fit_adapter, load_adapter
    from dermfm.assistant import ConsultReport, consult
    from dermfm.concepts import ConceptAnnotator, annotate_concepts
    from dermfm.errors import (
        DermfmError,
        ImageError,
        ModelNotAvailableError,
        ModelNotSupportedError,
    )
    from dermfm.io import load_image
    from dermfm.knowledge import load_concepts, load_label_set, load_ontology
    from dermfm.models import DermModel, list_models, load_model
    from dermfm.results import (
        ConceptAnnotation,
        ConceptScore,
        Diagnosis,
        Prediction,
        RollupEntry,
        SearchHit,
    )
    from dermfm.retrieval import Index
    from dermfm.zeroshot import ZeroShotClassifier, diagnose


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dermfm' has no attribute '{name}'")
