"""Browser tests of the clinician web app (``server/static``): a real ``dermfm serve`` process on
a free loopback port, driven by Playwright with Debian's Chromium (never a downloaded browser).
The uploads are a drawn melanoma photo (``tests/images.py``), and a real HAM10000 one when
``../shared/data`` is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is not installed (looked for `chromium` on PATH and {CHROMIUM})",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

from live_server import DERMFM, free_port, serve_process, stop_process, wait_healthy  # noqa: E402

from dermfm.assistant.report import percent  # noqa: E402

USER = "alice"
PASSWORD = "a long clinic passphrase"
PHONE = {"width": 390, "height": 844}
QUESTION = "Should this be seen soon?"
SERVER_START_S = 120
#: A message with patient details re-runs the consultation, encoding the class prompts again
#: for the new details: well over the default 30 s on a busy 2-core machine.
RECONSULT_MS = 600_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real ``dermfm serve`` with one clinician user."""
    data = tmp_path_factory.mktemp("server-data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    add_user = [DERMFM, "server", "user", "add", USER, "--role", "clinician", "--data", str(data)]
    added = subprocess.run(
        [*add_user, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = data / "serve.log"
    proc = serve_process(data, port, log)
    try:
        wait_healthy(base, proc, log, timeout=SERVER_START_S)
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def token(server: str) -> str:
    response = requests.post(
        f"{server}/api/login", json={"username": USER, "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


@pytest.fixture(scope="module")
def melanoma(melanoma_photo: Path) -> Path:
    """A drawn melanoma JPEG, and (``real_data``) a real HAM10000 one."""
    return melanoma_photo


def _api_case(server: str, token: str, image: Path) -> dict[str, Any]:
    with image.open("rb") as fh:
        response = requests.post(
            f"{server}/api/cases",
            headers={"Authorization": f"Bearer {token}"},
            files={"image": (image.name, fh, "image/jpeg")},
            timeout=120,
        )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def api_case(server: str, token: str, melanoma: Path) -> dict[str, Any]:
    """A case made through the REST API, for the screens that open a stored case."""
    return _api_case(server, token, melanoma)


def _latest_report(server: str, token: str, case_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{server}/api/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["reports"][-1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


def _sign_in(page: Any, url: str, password: str = PASSWORD) -> None:
    page.goto(url)
    page.get_by_test_id("login-username").fill(USER)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def _upload(page: Any, image: Path) -> dict[str, Any]:
    """Upload through the new-case form; the server's answer (status and JSON)."""
    page.get_by_test_id("case-image").set_input_files(str(image))
    page.get_by_test_id("case-question").fill(QUESTION)
    with page.expect_response(
        lambda r: r.url.endswith("/api/cases") and r.request.method == "POST"
    ) as answer:
        page.get_by_test_id("case-submit").click()
    return {"status": answer.value.status, "body": answer.value.json()}


def _width(locator: Any) -> float:
    return locator.bounding_box()["width"]


def test_sign_in_rejects_a_bad_password_and_accepts_the_right_one(page: Any, server: str) -> None:
    with page.expect_response(lambda r: r.url.endswith("/api/login")) as answer:
        _sign_in(page, server, password="not the password")
    assert answer.value.status == 401
    alert = page.get_by_test_id("error")
    expect(alert).to_be_visible()
    expect(alert).to_have_attribute("role", "alert")
    expect(alert).to_contain_text(answer.value.json()["error"]["message"])
    expect(page.get_by_test_id("login-screen")).to_be_visible()
    expect(page.get_by_test_id("new-case-screen")).to_be_hidden()

    _sign_in(page, server)
    expect(page.get_by_test_id("new-case-screen")).to_be_visible()
    expect(page.get_by_test_id("login-screen")).to_be_hidden()
    expect(alert).to_be_hidden()
    expect(page.get_by_test_id("user-name")).to_contain_text(USER)
    assert page.evaluate("sessionStorage.getItem('dermfm.token')")

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("login-screen")).to_be_visible()
    expect(page.get_by_test_id("nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('dermfm.token')") is None


def test_upload_shows_the_differential_concepts_and_triage(
    page: Any, server: str, melanoma: Path
) -> None:
    _sign_in(page, server)
    expect(page.get_by_test_id("new-case-screen")).to_be_visible()
    answer = _upload(page, melanoma)
    assert answer["status"] == 201, answer["body"]
    report = answer["body"]["report"]
    assert report["status"] == "complete"
    expect(page.get_by_test_id("results-screen")).to_be_visible()
    expect(page.get_by_test_id("case-status")).to_have_attribute("data-status", "complete")
    expect(page.get_by_test_id("case-header")).to_contain_text(melanoma.name)
    messages = page.get_by_test_id("chat-message")
    expect(messages).to_have_count(2)
    expect(messages.first).to_have_attribute("data-role", "user")
    expect(messages.first).to_contain_text(QUESTION)
    expect(messages.last).to_have_attribute("data-role", "assistant")
    expect(messages.last.locator("p")).to_have_text(report["narrative"]["answer"])
    expect(page.get_by_test_id("busy")).to_be_hidden()

    differential = report["differential"]
    candidates = differential["candidates"]
    bars = page.get_by_test_id("candidate")
    expect(bars.get_by_test_id("candidate-name")).to_have_text([c["name"] for c in candidates])
    expect(bars.get_by_test_id("candidate-probability")).to_have_text(
        [percent(c["probability"]) for c in candidates]
    )
    expect(bars.get_by_test_id("candidate-code")).to_have_text(
        [f"ICD-10-CM {c['icd10cm']}" for c in candidates if c["icd10cm"]]
    )
    in_set = [c["label"] for c in candidates if c["in_prediction_set"]]
    assert in_set, "the melanoma image should have a prediction set member in the differential"
    marked = page.locator("[data-testid=candidate][data-in-set=true]")
    expect(marked).to_have_count(len(in_set))
    for label in in_set:
        member = page.locator(f"[data-testid=candidate][data-label='{label}']")
        expect(member.get_by_test_id("in-set-badge")).to_be_visible()
    unmarked = page.locator("[data-testid=candidate][data-in-set=false]")
    expect(unmarked.get_by_test_id("in-set-badge")).to_have_count(0)
    expect(page.get_by_test_id("prediction-set")).to_contain_text(
        ", ".join(differential["prediction_set"]["names"])
    )
    top = bars.first
    ratio = _width(top.locator(".fill")) / _width(top.locator(".track"))
    assert ratio == pytest.approx(candidates[0]["probability"], abs=0.02)
    expect(page.get_by_test_id("probability-kind")).to_contain_text(
        differential["probability_kind"]
    )

    chips = page.get_by_test_id("concept-chip")
    expect(chips).to_have_count(len(report["characteristics"]))
    for chip, concept in zip(chips.all(), report["characteristics"], strict=True):
        expect(chip).to_contain_text(concept["name"])
        expect(chip).to_contain_text(f"{concept['score']:.2f}")

    triage = page.get_by_test_id("triage")
    expect(triage).to_have_attribute("data-level", report["triage"]["level"])
    rules = page.get_by_test_id("triage-reason")
    expect(rules).to_have_text([hit["reason"] for hit in report["triage"]["fired"]])
    if report["triage"]["level"] in ("urgent", "emergency"):
        expect(triage).to_have_attribute("role", "alert")
    expect(page.get_by_test_id("disclaimer")).to_have_text(report["disclaimer"])
    expect(page.get_by_test_id("limitation")).to_have_count(len(report["limitations"]))
    expect(page.get_by_test_id("similar-cases")).to_be_visible()


def test_a_blank_photo_shows_the_quality_problems(page: Any, server: str, tmp_path: Path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 300), (128, 128, 128)).save(blank)
    _sign_in(page, server)
    answer = _upload(page, blank)
    assert answer["status"] == 201, answer["body"]
    report = answer["body"]["report"]
    assert report["status"] == "needs_better_photo"
    expect(page.get_by_test_id("case-status")).to_have_attribute("data-status", report["status"])
    problems = page.get_by_test_id("quality-problem")
    expect(problems).to_have_text([p["message"] for p in report["quality"]["problems"]])
    expect(page.get_by_test_id("quality-problems")).to_have_attribute("role", "alert")
    expect(page.get_by_test_id("candidate")).to_have_count(0)
    expect(page.get_by_test_id("disclaimer")).to_have_text(report["disclaimer"])


def test_a_rejected_upload_shows_the_server_message(page: Any, server: str, tmp_path: Path) -> None:
    fake = tmp_path / "lesion.jpg"
    fake.write_text("this is a text file, not a photo")
    _sign_in(page, server)
    answer = _upload(page, fake)
    assert answer["status"] in (400, 415, 422)
    message = answer["body"]["error"]["message"]
    assert message
    expect(page.get_by_test_id("error")).to_contain_text(message)
    expect(page.get_by_test_id("new-case-screen")).to_be_visible()
    expect(page.get_by_test_id("case-submit")).to_be_enabled()


def test_chat_answers_and_refreshes_the_report(
    page: Any, server: str, token: str, api_case: dict[str, Any]
) -> None:
    case_id = api_case["case"]["case_id"]
    _sign_in(page, server + f"/#case/{case_id}")
    expect(page.get_by_test_id("results-screen")).to_be_visible()
    page.get_by_test_id("chat-input").fill("It is on the back and it has been growing.")
    with page.expect_response(
        lambda r: r.url.endswith(f"/api/cases/{case_id}/messages"), timeout=RECONSULT_MS
    ) as r:
        page.get_by_test_id("chat-send").click()
    reply = r.value.json()
    assert r.value.status == 200
    messages = page.get_by_test_id("chat-message")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_have_attribute("data-role", "user")
    expect(messages.nth(0)).to_contain_text("growing")
    expect(messages.nth(1)).to_have_attribute("data-role", "assistant")
    expect(messages.nth(1).locator("p")).to_have_text(reply["answer"])
    assert reply["report_updated"], "site and growth change the findings"
    expect(page.get_by_test_id("report-updated")).to_be_visible()
    expect(page.get_by_test_id("patient")).to_contain_text("site: back")
    expect(page.get_by_test_id("patient")).to_contain_text("change: growing")
    assert _latest_report(server, token, case_id)["patient"]["site"] == "back"


def test_documents_download_through_real_links(
    page: Any, server: str, api_case: dict[str, Any]
) -> None:
    case_id = api_case["case"]["case_id"]
    _sign_in(page, server + f"/#case/{case_id}")
    for kind in ("report", "soap", "handout", "referral"):
        for fmt in ("pdf", "md"):
            link = page.get_by_test_id(f"doc-{kind}-{fmt}")
            expect(link).to_have_attribute("download", f"dermfm-{case_id}-{kind}.{fmt}")
    with page.expect_download() as pdf:
        page.get_by_test_id("doc-report-pdf").click()
    assert pdf.value.suggested_filename == f"dermfm-{case_id}-report.pdf"
    assert Path(pdf.value.path()).read_bytes().startswith(b"%PDF")
    with page.expect_download() as md:
        page.get_by_test_id("doc-referral-md").click()
    text = Path(md.value.path()).read_text(encoding="utf-8")
    assert md.value.suggested_filename.endswith("-referral.md")
    assert text.strip() and not text.startswith("%PDF")
    with page.expect_download() as fhir:
        page.get_by_test_id("doc-fhir").click()
    assert fhir.value.suggested_filename == f"dermfm-{case_id}-fhir.json"
    bundle = json.loads(Path(fhir.value.path()).read_text(encoding="utf-8"))
    assert bundle["resourceType"] == "Bundle" and bundle["entry"][0]["resource"]["presentedForm"]


def _fits_the_phone(phone: Any) -> None:
    """No horizontal scroll and touch-sized controls on the visible screen."""
    widths = phone.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1] == PHONE["width"]
    for control in phone.locator("button:visible, a.button:visible, label.button:visible").all():
        assert control.bounding_box()["height"] >= 44, control.inner_text()


def test_screens_fit_a_phone(browser: Any, server: str, api_case: dict[str, Any]) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    phone = context.new_page()
    try:
        case_id = api_case["case"]["case_id"]
        _sign_in(phone, server + f"/#case/{case_id}")
        expect(phone.get_by_test_id("candidate").first).to_be_visible()
        expect(phone.get_by_test_id("disclaimer")).to_be_visible()
        _fits_the_phone(phone)

        phone.get_by_test_id("nav-history").click()
        expect(phone.get_by_test_id("history-item").first).to_be_visible()
        _fits_the_phone(phone)

        phone.get_by_test_id("nav-new").click()
        expect(phone.get_by_test_id("new-case-screen")).to_be_visible()
        _fits_the_phone(phone)
        camera = phone.get_by_test_id("case-camera")
        expect(camera).to_have_attribute("capture", "environment")
        expect(camera).to_have_attribute("accept", "image/*")
    finally:
        context.close()


def test_case_history_lists_searches_and_opens_cases(
    page: Any, server: str, api_case: dict[str, Any], melanoma: Path
) -> None:
    case_id = api_case["case"]["case_id"]
    _sign_in(page, server + "/#history")
    item = page.locator(f"[data-testid=history-item][data-case-id='{case_id}']")
    expect(item).to_be_visible()

    page.get_by_test_id("history-search").fill(melanoma.stem)
    page.get_by_test_id("history-search-submit").click()
    expect(page.get_by_test_id("history-total")).to_contain_text(melanoma.stem)
    expect(item).to_be_visible()
    page.get_by_test_id("history-search").fill("no-such-case-anywhere")
    page.get_by_test_id("history-search-submit").click()
    expect(page.get_by_test_id("history-item")).to_have_count(0)
    expect(page.get_by_test_id("history-total")).to_contain_text("No cases match")

    page.get_by_test_id("history-search").fill(melanoma.stem)
    page.get_by_test_id("history-search-submit").click()
    item.get_by_test_id("history-open").click()
    expect(page.get_by_test_id("results-screen")).to_be_visible()
    expect(page.get_by_test_id("case-header")).to_contain_text(case_id)
    assert page.url.endswith(f"#case/{case_id}")


def test_deleting_a_case_asks_first(page: Any, server: str, token: str, melanoma: Path) -> None:
    case_id = _api_case(server, token, melanoma)["case"]["case_id"]
    _sign_in(page, server + "/#history")
    item = page.locator(f"[data-testid=history-item][data-case-id='{case_id}']")
    page.once("dialog", lambda dialog: dialog.dismiss())
    item.get_by_test_id("history-delete").click()
    expect(item).to_be_visible()
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{server}/api/cases/{case_id}", headers=auth, timeout=10).ok

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_test_id("history-delete").click()
    expect(item).to_have_count(0)
    gone = requests.get(f"{server}/api/cases/{case_id}", headers=auth, timeout=10)
    assert gone.status_code == 404
