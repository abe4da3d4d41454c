"""The web app opens a study of the configured PACS (issue 16, part 5): a real ``dermfm serve
--pacs`` process with the tiny model, Orthanc on loopback, Debian's Chromium through Playwright.
(The codes beside the candidates and the FHIR download are checked in test_server_webapp.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import free_port, serve_process, stop_process, wait_healthy
from test_interop_dicomweb import orthanc, upload_study  # noqa: F401 - the Orthanc fixture
from test_server_webapp import PASSWORD, USER, _sign_in, browser, expect, page  # noqa: F401

pytestmark = pytest.mark.slow  # a server process, Orthanc and Chromium: about a minute


@pytest.fixture(scope="module")
def pacs_server(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: str,  # noqa: F811
    tiny_open_clip: Path,
) -> Iterator[str]:
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

    data = tmp_path_factory.mktemp("pacs-server")
    database = Database(ServerSettings(data_dir=data).url)
    database.create_user(USER, "clinician", PASSWORD)
    database.close()
    port = free_port()
    log = data / "serve.log"
    proc = serve_process(data, port, log, "--model", str(tiny_open_clip), "--pacs", orthanc)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log, timeout=300)
        yield base
    finally:
        stop_process(proc)


def test_a_study_opens_from_the_pacs_by_its_uid(
    page: Any,  # noqa: F811
    pacs_server: str,
    orthanc: str,  # noqa: F811
) -> None:
    study, _ = upload_study(orthanc)
    _sign_in(page, pacs_server)
    expect(page.get_by_test_id("new-case-screen")).to_be_visible()
    page.get_by_test_id("pacs-study").fill(study)
    with page.expect_response(lambda r: "/api/pacs/studies/" in r.url) as answer:
        page.get_by_test_id("pacs-submit").click()
    assert answer.value.status == 201, answer.value.text()
    opened = answer.value.json()
    assert opened["study_uid"] == study and len(opened["cases"]) == 3
    expect(page.get_by_test_id("results-screen")).to_be_visible()
    expect(page.get_by_test_id("case-header")).to_contain_text("study-")
    expect(page.get_by_test_id("doc-fhir")).to_be_visible()
    # an unknown study is the server's message, not a crash
    page.goto(pacs_server + "/#new")
    page.get_by_test_id("pacs-study").fill("1.2.3.4")
    page.get_by_test_id("pacs-submit").click()
    expect(page.get_by_test_id("error")).to_contain_text("no study")
