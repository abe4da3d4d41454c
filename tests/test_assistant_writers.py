"""The assistant's writers and output validation: the template writer, an OpenAI-compatible
endpoint played by a real loopback HTTP server (well-behaved and misbehaving), the local GGUF
writer, and the validation rules with their false-positive traps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from dermfm.assistant.report import (
    Candidate,
    Message,
    Narrative,
    QualityCheck,
    QualityProblem,
    SimilarCase,
    Triage,
)
from dermfm.assistant.validation import validate_output
from dermfm.assistant.writers import (
    LlamaCppWriter,
    OpenAIWriter,
    TemplateWriter,
    WriterError,
    make_writer,
    parse_completion,
    write_narrative,
)
from dermfm.errors import DermfmError
from dermfm.knowledge import load_label_set

CANDIDATES = ("melanoma", "melanocytic nevus", "seborrheic keratosis")


# ---------------------------------------------------------------------------------------------
# A loopback server playing an OpenAI-compatible chat endpoint


def _findings_in(request: dict[str, Any]) -> dict[str, Any]:
    """The findings JSON object inside the last user message of a chat request."""
    content = request["messages"][-1]["content"]
    findings, _ = json.JSONDecoder().raw_decode(content, content.index("{"))
    return findings


def _reply_content(behaviour: str, request: dict[str, Any]) -> str:
    findings = _findings_in(request)
    top = findings["differential"]["candidates"][0]
    kind = findings["differential"]["probability_kind"]
    good = {
        "summary": f"The model suggests {top['name']} as the leading possibility "
        f"({round(top['probability'] * 100)}%, {kind}). Please see a dermatologist soon.",
        "answer": f"The model's top possibility is {top['name']}; a clinician should check it.",
    }
    contents = {
        "good": json.dumps(good),
        "fenced": "```json\n" + json.dumps(good) + "\n```",
        "invent": json.dumps({**good, "summary": "The model thinks this looks like psoriasis."}),
        "dose": json.dumps({**good, "answer": "Apply a 1% hydrocortisone cream twice daily."}),
        "certain": json.dumps({**good, "summary": "This is definitely melanoma."}),
        "broken": '{"summary": "The model suggests melanoma", "answer": ',
        "array": json.dumps([good]),
    }
    return contents[behaviour]


@pytest.fixture
def endpoint() -> Iterator[SimpleNamespace]:
    """A real HTTP server on 127.0.0.1; ``state.behaviour`` picks how it answers and
    ``state.requests`` records what it received."""
    state = SimpleNamespace(behaviour="good", requests=[], url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            request = json.loads(raw)
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "raw": raw.decode("utf-8"),
                    "json": request,
                }
            )
            if state.behaviour == "slow":
                time.sleep(1.5)
            if state.behaviour == "http500":
                body, status = b'{"error": {"message": "model crashed"}}', 500
            else:
                content = _reply_content(
                    "good" if state.behaviour == "slow" else state.behaviour, request
                )
                body, status = (
                    json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "model": request["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content},
                                }
                            ],
                        }
                    ).encode(),
                    200,
                )
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
    server.server_close()


HISTORY = [
    Message(role="user", content="I have a dark spot on my back."),
    Message(role="assistant", content="Thank you; the model's findings are in the report."),
]


def test_well_behaved_endpoint_is_used_and_gets_only_the_findings(sample_report, endpoint):
    writer = OpenAIWriter(endpoint.url + "/", "test-model", api_key="sk-test", timeout=5)
    narrative = write_narrative(writer, sample_report, "What should I do?", HISTORY)

    assert narrative.writer == "openai:test-model"
    assert narrative.fallback is None
    assert narrative.summary.startswith("The model suggests melanoma")
    assert "calibrated (temperature 2.06" in narrative.summary
    assert (
        narrative.answer == "The model's top possibility is melanoma; a clinician should check it."
    )

    (request,) = endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["json"]
    assert body["model"] == "test-model"
    assert body["response_format"] == {"type": "json_object"}
    messages = body["messages"]
    assert messages[0]["role"] == "system"
    assert "Never claim certainty" in messages[0]["content"]
    assert "Name only diagnoses" in messages[0]["content"]
    assert messages[1:3] == [
        {"role": "user", "content": "I have a dark spot on my back."},
        {"role": "assistant", "content": "Thank you; the model's findings are in the report."},
    ]
    assert messages[-1]["role"] == "user"
    assert "Question: What should I do?" in messages[-1]["content"]
    sent = _findings_in(body)
    assert [c["name"] for c in sent["differential"]["candidates"]] == list(CANDIDATES)
    assert sent["triage"]["level"] == "urgent"
    # no file path of the report reaches the endpoint
    assert "lesion.jpg" not in request["raw"]
    assert "/cases/a.jpg" not in request["raw"]
    assert "path" not in sent["similar_cases"][0]


def test_fenced_json_is_accepted_and_no_key_means_no_auth_header(sample_report, endpoint):
    endpoint.behaviour = "fenced"
    writer = OpenAIWriter(endpoint.url + "/chat/completions", "m", timeout=5)
    narrative = write_narrative(writer, sample_report)
    assert narrative.writer == "openai:m"
    assert narrative.answer is None  # no question asked: no answer kept
    assert "Authorization" not in endpoint.requests[0]["headers"]
    assert "There is no question" in endpoint.requests[0]["json"]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("invent", "unsupported diagnosis 'psoriasis'"),
        ("dose", "dose '1% hydrocortisone cream'"),
        ("certain", "certainty claim 'definitely'"),
        ("broken", "not valid JSON"),
        ("array", "not an object"),
        ("http500", "HTTP 500"),
        ("slow", "timed out"),
    ],
)
def test_misbehaving_endpoint_falls_back_to_the_template(
    sample_report, endpoint, behaviour, reason
):
    endpoint.behaviour = behaviour
    writer = OpenAIWriter(endpoint.url, "m", timeout=0.5)
    start = time.monotonic()
    narrative = write_narrative(writer, sample_report, "Is it cancer?")
    assert time.monotonic() - start < 1.4  # the timeout is honoured, not the server's sleep
    assert narrative.writer == "template"
    assert narrative.fallback is not None
    assert narrative.fallback.startswith("openai:m: ")
    assert reason in narrative.fallback
    assert narrative.fallback.endswith("fell back to the template writer")
    assert "\n" not in narrative.fallback
    template = TemplateWriter().write(sample_report.findings(), "Is it cancer?", [])
    assert narrative.summary == template["summary"]
    assert narrative.answer == template["answer"]
    assert "psoriasis" not in narrative.summary + narrative.answer


def test_unreachable_endpoint_and_crashing_writer_fall_back(sample_report):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_port
    closed.server_close()
    narrative = write_narrative(
        OpenAIWriter(f"http://127.0.0.1:{port}/v1", "m", timeout=2), sample_report
    )
    assert narrative.writer == "template"
    assert "cannot reach" in narrative.fallback

    class Crashing:
        name = "crashing"

        def write(self, findings, question, history):
            raise ValueError("boom")

    narrative = write_narrative(Crashing(), sample_report, "What is it?")
    assert narrative.fallback == "crashing: ValueError: boom; fell back to the template writer"
    assert narrative.answer


def test_parse_completion_errors():
    with pytest.raises(WriterError, match="choices"):
        parse_completion({"choices": []})
    with pytest.raises(WriterError, match="empty"):
        parse_completion({"choices": [{"message": {"content": "  "}}]})
    assert parse_completion(
        {"choices": [{"message": {"content": '```\n{"summary": "s", "answer": null}\n```'}}]}
    ) == {"summary": "s", "answer": None}


def test_make_writer():
    assert isinstance(make_writer(), TemplateWriter)
    writer = make_writer(
        "openai", url="http://localhost:11434/v1/", model="llama3.2", api_key="k", timeout=3
    )
    assert isinstance(writer, OpenAIWriter)
    assert writer.endpoint == "http://localhost:11434/v1/chat/completions"
    assert writer.name == "openai:llama3.2"
    assert writer.timeout == 3
    with pytest.raises(WriterError, match="needs url and model"):
        make_writer("openai")
    with pytest.raises(WriterError, match="needs model"):
        make_writer("openai", url="http://localhost:8080/v1")
    with pytest.raises(WriterError, match="http:// or https://"):
        make_writer("openai", url="localhost:8080", model="m")
    with pytest.raises(WriterError, match="unknown writer 'gpt'"):
        make_writer("gpt")
    assert issubclass(WriterError, DermfmError)


def test_llama_cpp_missing_says_how_to_install():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        with pytest.raises(WriterError, match=r"pip install 'dermfm\[llm\]'"):
            LlamaCppWriter()
    else:
        pytest.skip("llama-cpp-python is installed")


_GEMMA_SCRIPT = """
import json, sys
from dermfm.assistant.report import ConsultReport
from dermfm.assistant.writers import LlamaCppWriter, write_narrative
report = ConsultReport.model_validate_json(open(sys.argv[1]).read())
writer = LlamaCppWriter(n_ctx=4096, max_tokens=256, temperature=0.0)  # greedy: repeatable
print(writer.name)
print(json.dumps(writer.write(report.findings(), "Is it serious?", [])))  # the raw generation
print(write_narrative(writer, report, "Is it serious?").model_dump_json())
"""


@pytest.mark.slow
def test_llama_cpp_gemma_generates_text_and_only_validated_text_is_shown(sample_report, tmp_path):
    """The local GGUF model really runs (its raw output is a non-empty summary), and what the
    user sees is either that output, passing every rule, or the template text with the rules
    it broke named: never an unvalidated generation, never a load or run error."""
    pytest.importorskip("llama_cpp")
    # a child process, so that a crash of the native library fails this test, not the session
    path = tmp_path / "report.json"
    path.write_text(sample_report.model_dump_json())
    run = subprocess.run(
        [sys.executable, "-c", _GEMMA_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, (
        f"llama-cpp-python run failed ({run.returncode}): {run.stderr[-2000:]}"
    )
    name, raw_json, narrative_json = run.stdout.strip().splitlines()[-3:]
    assert name == "llama-cpp:gemma-3-270m-q4_k_m.gguf"
    raw = json.loads(raw_json)
    assert isinstance(raw, dict) and str(raw.get("summary", "")).strip()  # the model generated
    narrative = Narrative.model_validate_json(narrative_json)
    violations = validate_output(raw, sample_report.findings(), question="Is it serious?")
    if violations:  # shown only as the template text, with the broken rules named
        assert narrative.writer == "template"
        assert narrative.fallback.startswith(name + ": ")
        assert str(violations[0]) in narrative.fallback
    else:
        assert narrative.writer == name and narrative.fallback is None
        assert narrative.summary == raw["summary"].strip()


# ---------------------------------------------------------------------------------------------
# The template writer

QUESTIONS = {
    "What is it?": [
        "melanoma (46%)",
        "melanocytic nevus (31%)",
        "seborrheic keratosis (12%)",
        "calibrated probabilities",
        "not a diagnosis",
    ],
    "How sure are you about this?": ["calibrated probability of 46%", "31%", "90%", "91%"],
    "Could it be cancer?": ["50%", "melanoma (46%)", "urgent"],
    "What should I do next?": [
        "urgent",
        "See a dermatologist promptly (within 2 weeks).",
        "ranked 1 with probability 0.46",
    ],
    "How is it treated?": ["Surgical removal; further treatment depends on stage."],
    "Why do you think so?": ["pigment network (0.71)", "blue-whitish veil (0.58)"],
    "Are there similar cases?": ["mel (similarity 0.83)"],
    "It has been growing for 3 weeks, does that matter?": [
        "age: 54",
        "site: back",
        "change: growing",
    ],
    "Hello": ["melanoma (46%)", "urgent", "You can ask"],
}


def test_template_summary_states_the_findings(sample_report):
    findings = sample_report.findings()
    output = TemplateWriter().write(findings, None, [])
    assert output["answer"] is None
    summary = output["summary"]
    for text in (
        "dermoscopy",
        "pigment network (0.71)",
        "melanoma (46%)",
        "melanocytic nevus (31%)",
        "seborrheic keratosis (12%)",
        "calibrated probabilities",
        "temperature 2.06",
        "melanoma and melanocytic nevus",
        "about 90% of the time (91% measured on a test split)",
        "HAM10000 + DermNet NZ validation splits",
        "urgent",
        "melanoma (malignant) is ranked 1",
        "Skin type not given",
        "not a diagnosis",
    ):
        assert text in summary
    assert validate_output(output, findings) == []


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_template_answers_each_intent_cleanly(sample_report, question):
    narrative = write_narrative(TemplateWriter(), sample_report, question)
    assert narrative.writer == "template"
    assert narrative.fallback is None
    for text in QUESTIONS[question]:
        assert text in narrative.answer
    output = {"summary": narrative.summary, "answer": narrative.answer}
    assert validate_output(output, sample_report.findings(), question=question) == []


def test_template_intents_are_distinct(sample_report):
    answers = {write_narrative(TemplateWriter(), sample_report, q).answer for q in QUESTIONS}
    assert len(answers) == len(QUESTIONS)


def test_template_raw_scores_context_and_no_prediction_set(sample_report):
    d = sample_report.differential
    image_only = [c.model_copy(update={"rank": 4 - c.rank}) for c in reversed(d.candidates)]
    report = sample_report.model_copy(
        update={
            "differential": d.model_copy(
                update={
                    "calibrated": False,
                    "probability_kind": "raw zero-shot score",
                    "prediction_set": None,
                    "context": ["site: back", "change: growing"],
                    "image_only": image_only,
                }
            )
        }
    )
    narrative = write_narrative(TemplateWriter(), report, "Does it matter that it is growing?")
    assert "raw scores, not calibrated probabilities" in narrative.summary
    assert "no calibrated prediction set" in narrative.summary
    assert "Your details (site: back; change: growing) were used" in narrative.summary
    assert (
        "From the image alone, the order was seborrheic keratosis (12%), melanocytic nevus "
        "(31%) and melanoma (46%)"
    ) in narrative.answer
    assert "with your details the order is melanoma (46%)" in narrative.answer
    confidence = write_narrative(TemplateWriter(), report, "How sure is it?").answer
    assert "a raw score (not a calibrated probability) of 46%" in confidence


def test_template_needs_better_photo(sample_report):
    report = sample_report.model_copy(
        update={
            "status": "needs_better_photo",
            "differential": None,
            "modality": None,
            "characteristics": [],
            "information": [],
            "similar_cases": [],
            "quality": QualityCheck(
                usable=False,
                problems=[
                    QualityProblem(
                        kind="blurry",
                        message="The photo is blurry: hold the camera still and retake it",
                        value=12.0,
                        threshold=40.0,
                    )
                ],
            ),
            "triage": Triage(level="none", advice="Retake the photo in good, even light."),
        }
    )
    for question in (None, "What is it?", "It itches, is that important?"):
        narrative = write_narrative(TemplateWriter(), report, question)
        assert narrative.writer == "template"
        assert "A better photo is needed" in narrative.summary
        assert "The photo is blurry: hold the camera still and retake it." in narrative.summary
        assert not any(name in narrative.summary for name in CANDIDATES)
        if question:
            assert "photo could not be assessed" in narrative.answer
            assert not any(name in narrative.answer for name in CANDIDATES)
    assert "You told me: age: 54" in narrative.answer


def test_template_hides_similar_case_labels_outside_the_differential(sample_report):
    report = sample_report.model_copy(
        update={
            "similar_cases": [
                SimilarCase(rank=1, path="/x/1.jpg", label="psoriasis", similarity=0.7),
                SimilarCase(rank=2, path="/x/2.jpg", label="melanoma", similarity=0.6),
            ]
        }
    )
    answer = write_narrative(TemplateWriter(), report, "Show me similar cases").answer
    assert "psoriasis" not in answer
    assert "outside this list (similarity 0.70)" in answer
    assert "melanoma (similarity 0.60)" in answer


# ---------------------------------------------------------------------------------------------
# Validation


def _kinds(text: str, findings: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (v.kind, v.detail) for v in validate_output({"summary": text, "answer": None}, findings)
    ]


def _only(sample_report, *candidates: Candidate) -> dict[str, Any]:
    """Findings of the sample report with a differential of just ``candidates``."""
    d = sample_report.differential.model_copy(
        update={"candidates": list(candidates), "prediction_set": None}
    )
    return sample_report.model_copy(update={"differential": d, "information": []}).findings()


def test_validation_allows_candidates_synonyms_and_their_categories(sample_report):
    findings = sample_report.findings()
    text = (
        "The model lists melanoma, a melanocytic nevus (a mole) and seborrhoeic keratosis. "
        "Melanoma is a skin cancer; a nevus is a benign melanocytic lesion, a benign skin "
        "lesion. Does it itch? Ten days ago it grew. Moles change."
    )
    assert _kinds(text, findings) == []


def test_validation_flags_names_outside_the_differential(sample_report):
    findings = sample_report.findings()
    assert _kinds("It might be psoriasis or warts, or a BCC.", findings) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'psoriasis'"),
        ("unsupported_diagnosis", "unsupported diagnosis 'warts'"),
        ("unsupported_diagnosis", "unsupported diagnosis 'BCC'"),
    ]
    nevus_only = _only(sample_report, sample_report.differential.candidates[1])
    assert _kinds("Possibly a mole; not a skin cancer.", nevus_only) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'skin cancer'")
    ]
    melanoma_only = _only(sample_report, sample_report.differential.candidates[0])
    assert _kinds("A benign melanocytic lesion is possible.", melanoma_only) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'benign melanocytic lesion'")
    ]


def test_validation_longest_match_first(sample_report):
    melanoma = sample_report.differential.candidates[0]
    melanoma_only = _only(sample_report, melanoma)
    # one violation for the longer name, not a second one for "melanoma" inside it
    assert _kinds("It may be superficial spreading melanoma.", melanoma_only) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'superficial spreading melanoma'")
    ]
    lmm = Candidate(
        rank=1,
        label="lentigo maligna melanoma",
        name="lentigo maligna melanoma",
        node="lentigo_maligna_melanoma",
        probability=0.6,
    )
    # "lentigo maligna" and "lentigo" are other nodes: matched alone they would be flagged
    assert _kinds("The model suggests lentigo maligna melanoma.", _only(sample_report, lmm)) == []
    assert _kinds("Or lentigo maligna.", _only(sample_report, lmm)) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'lentigo maligna'")
    ]
    assert _kinds("A non-melanoma skin cancer is possible.", melanoma_only) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'non-melanoma skin cancer'")
    ]


def test_validation_without_differential_and_with_user_history(sample_report):
    photo = sample_report.model_copy(
        update={
            "status": "needs_better_photo",
            "differential": None,
            "information": [],
            "triage": Triage(level="none", advice="Retake the photo."),
        }
    )
    assert _kinds("This could be a mole or melanoma.", photo.findings()) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'mole'"),
        ("unsupported_diagnosis", "unsupported diagnosis 'melanoma'"),
    ]
    assert _kinds("Please retake the photo of the skin condition.", photo.findings()) == []
    told = photo.model_copy(
        update={
            "question": "Could it be psoriasis?",
            "patient": photo.patient.model_copy(
                update={"history": ["personal_melanoma"], "notes": ["my aunt had rosacea"]}
            ),
        }
    )
    # restating the patient's history is not naming a diagnosis of this lesion; a question or a
    # free note naming a condition does not make it a finding
    assert _kinds("You mentioned a previous melanoma.", told.findings()) == []
    assert _kinds("Psoriasis or rosacea are possible.", told.findings()) == [
        ("unsupported_diagnosis", "unsupported diagnosis 'Psoriasis'"),
        ("unsupported_diagnosis", "unsupported diagnosis 'rosacea'"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Take 500 mg of it.",
        "Apply a 1% hydrocortisone cream.",
        "Use it twice daily.",
        "Use it 3 times a day.",
        "Apply every 8 hours.",
        "Give 2 tablets.",
        "Use 0.5 ml.",
    ],
)
def test_validation_flags_doses(sample_report, text):
    assert [k for k, _ in _kinds(text, sample_report.findings())] == ["dosage"]


@pytest.mark.parametrize(
    "text",
    [
        "This is definitely worrying.",
        "You have melanoma.",
        "This is a melanocytic nevus.",
        "It's melanoma.",
        "I am 100% sure.",
        "The diagnosis is clear.",
        "Without doubt, see a doctor.",
    ],
)
def test_validation_flags_certainty(sample_report, text):
    assert "certainty" in [k for k, _ in _kinds(text, sample_report.findings())]


def test_validation_no_false_positives_on_hedged_text(sample_report):
    text = (
        "The model gives melanoma 46% and the set covers 90% of cases; it is likely "
        "melanoma but it is not certain. This is not a diagnosis. See a dermatologist "
        "within 2 weeks; the closest case has similarity 0.83. It is melanoma-like."
    )
    assert _kinds(text, sample_report.findings()) == []


def test_validation_schema(sample_report):
    findings = sample_report.findings()
    assert [v.kind for v in validate_output(["x"], findings)] == ["schema"]
    assert [v.kind for v in validate_output({"answer": "a"}, findings)] == ["schema"]
    assert [v.kind for v in validate_output({"summary": "s", "answer": 3}, findings)] == ["schema"]
    assert [v.kind for v in validate_output({"summary": " ", "answer": None}, findings)] == [
        "empty"
    ]
    assert [
        v.kind
        for v in validate_output({"summary": "s", "answer": None}, findings, question="What is it?")
    ] == ["empty"]
    assert (
        validate_output({"summary": "s", "answer": "a", "extra": 1}, findings, question="q") == []
    )
    # a small model echoing the reply format of the prompt (seen with Gemma 3 270M)
    echoed = {"summary": "<a short summary of the findings>", "answer": None}
    assert [v.kind for v in validate_output(echoed, findings)] == ["schema"]
    rounded = {"summary": "melanoma (<1%) and nevus (>99%) are listed.", "answer": None}
    assert validate_output(rounded, findings) == []


@pytest.mark.parametrize("label_set", ["ham7", "derm7pt"])
def test_template_is_clean_for_every_class_of_a_label_set(sample_report, label_set):
    for cls in load_label_set(label_set).classes:
        only = Candidate(rank=1, label=cls.label, name=cls.name, node=cls.node, probability=0.7)
        findings = _only(sample_report, only)
        for question in ("What is it?", "How sure is the model?", "Hello"):
            output = TemplateWriter().write(findings, question, [])
            assert cls.name in output["summary"]
            assert validate_output(output, findings, question=question) == [], cls.name


def test_a_near_certain_candidate_is_written_without_a_certainty_claim(sample_report):
    from dermfm.assistant.rules import load_rules, triage

    top = sample_report.differential.candidates[0].model_copy(update={"probability": 0.998})
    differential = sample_report.differential.model_copy(
        update={"candidates": [top], "malignancy": {"malignant": 0.998}}
    )
    report = sample_report.model_copy(update={"differential": differential})
    report = report.model_copy(
        update={"triage": triage(load_rules(), differential, report.patient)}
    )
    narrative = write_narrative(TemplateWriter(), report, "How sure is it?")
    assert "100%" not in narrative.summary + (narrative.answer or "")
