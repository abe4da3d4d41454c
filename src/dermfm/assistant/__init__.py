"""The dermfm assistant: grounded consultations about a skin image.

The vision-language model decides the findings; text only explains them, and every statement
is checked::

    from dermfm.assistant import Assistant, Consultation, CaseStore
    report = dermfm.consult("lesion.jpg", "Should I worry?")        # one call
    assistant = Assistant(writer=make_writer("openai", url=..., model=...))
    chat = Consultation.start(assistant, "lesion.jpg", store=CaseStore())
    reply = chat.ask("It has been growing for 3 months, I am 54.")
    write_documents(chat.report, "visit/")                           # SOAP, handout, referral

* :mod:`~dermfm.assistant.report`: the report schema (pydantic; JSON schema included).
* :mod:`~dermfm.assistant.consult`: the pipeline (:class:`Assistant`, :func:`consult`).
* :mod:`~dermfm.assistant.settings`: the consultation's settings (``consult.yaml``).
* :mod:`~dermfm.assistant.modality`: the zero-shot dermoscopy / clinical check.
* :mod:`~dermfm.assistant.quality`: photo quality and "is this skin?" checks.
* :mod:`~dermfm.assistant.calibration`: temperature and conformal sets stored with the model.
* :mod:`~dermfm.assistant.rules`: explicit safety rules (``rules.yaml``).
* :mod:`~dermfm.assistant.patient`: patient details from what the user says.
* :mod:`~dermfm.assistant.conversation`: multi-turn chat and the case store.
* :mod:`~dermfm.assistant.writers` / :mod:`~dermfm.assistant.validation`: template, OpenAI-
  compatible and GGUF writers; every output validated, with fallback to the template.
* :mod:`~dermfm.assistant.documents`: report, SOAP note, patient handout, referral (MD + PDF).

dermfm supports clinicians; it does not make diagnoses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# loaded on first use, so that `dermfm --help` (which registers the assistant's commands) is fast
_EXPORTS = {
    "Assistant": "dermfm.assistant.consult",
    "consult": "dermfm.assistant.consult",
    "Case": "dermfm.assistant.conversation",
    "CaseStore": "dermfm.assistant.conversation",
    "Consultation": "dermfm.assistant.conversation",
    "Reply": "dermfm.assistant.conversation",
    "write_documents": "dermfm.assistant.documents",
    "ConsultReport": "dermfm.assistant.report",
    "PatientDetails": "dermfm.assistant.report",
    "make_writer": "dermfm.assistant.writers",
}

__all__ = [
    "Assistant",
    "Case",
    "CaseStore",
    "ConsultReport",
    "Consultation",
    "PatientDetails",
    "Reply",
    "consult",
    "make_writer",
    "write_documents",
]

if TYPE_CHECKING:
    from dermfm.assistant.consult import Assistant, consult
    from dermfm.assistant.conversation import Case, CaseStore, Consultation, Reply
    from dermfm.assistant.documents import write_documents
    from dermfm.assistant.report import ConsultReport, PatientDetails
    from dermfm.assistant.writers import make_writer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dermfm.assistant' has no attribute '{name}'")
