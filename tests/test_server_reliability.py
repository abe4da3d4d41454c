"""Reliability of the server: schemathesis against its OpenAPI spec finds no server error, and a
server killed with SIGKILL in the middle of writes loses no acknowledged case."""

from __future__ import annotations

import csv
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from live_server import (  # noqa: E402
    DERMFM,
    free_port,
    serve_process,
    start_server,
    stop_process,
    wait_healthy,
)
from test_server_api import Live  # noqa: E402


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

    data = tmp_path_factory.mktemp("fuzz")
    database = Database(ServerSettings(data_dir=data).url)
    database.create_user("fuzz", "admin", "fuzz-password")
    token = database.create_token("fuzz", days=1, kind="api")[0]
    url, server, thread = start_server(data, burst=100000, rate_per_minute=1e7)
    yield Live(url, data, {"fuzz": token})
    server.should_exit = True
    thread.join(timeout=30)


def test_no_input_makes_the_server_fail(api: Live) -> None:
    """Every operation of the published spec, with schemathesis-generated inputs (valid and
    not), answers below 500 and with the one error shape."""
    from hypothesis import given

    headers = {"Authorization": f"Bearer {api.tokens['fuzz']}"}
    spec = schemathesis.openapi.from_url(api.url + "/openapi.json")
    operations = [result.ok() for result in spec.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case) -> None:
            response = case.call(headers=headers, timeout=120)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}  # one error shape everywhere

        check()


def _dermfm(*args: object, data: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DERMFM), *map(str, args), "--data", str(data)],
        text=True,
        capture_output=True,
        timeout=120,
        **kwargs,
    )


def test_sigkill_during_writes_loses_no_acknowledged_case(
    shared_data: Path, tmp_path: Path
) -> None:
    if not DERMFM.exists():
        pytest.skip("the dermfm console script is not installed")
    data = tmp_path / "data"
    assert (
        _dermfm(
            "server", "user", "add", "w", "--password-stdin", data=data, input="pw-writer-1\n"
        ).returncode
        == 0
    )
    token = _dermfm("server", "token", "create", "w", data=data).stdout.strip()
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:40]
    photos = [shared_data / "ham10000" / r["file"] for r in rows]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = serve_process(data, port, log)
    wait_healthy(url, server, log)
    auth = {"Authorization": f"Bearer {token}"}
    warm = httpx.post(
        url + "/api/cases",
        headers=auth,
        timeout=600,
        files={"image": (photos[-1].name, photos[-1].read_bytes())},
    )
    assert warm.status_code == 201, warm.text  # first consult builds the class embeddings
    acknowledged: list[str] = [warm.json()["case"]["case_id"]]
    stop = threading.Event()

    def writer(offset: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            for photo in photos[offset::3]:
                if stop.is_set():
                    return
                try:
                    response = client.post(
                        "/api/cases", files={"image": (photo.name, photo.read_bytes())}
                    )
                except httpx.HTTPError:
                    continue  # e.g. the server died mid-request: not acknowledged
                if response.status_code == 201:
                    acknowledged.append(response.json()["case"]["case_id"])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 240
    while len(acknowledged) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)  # in the middle of the writers' requests
    server.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acknowledged) >= 6

    with sqlite3.connect(data / "dermfm.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restarted = serve_process(data, port, log)
    try:
        wait_healthy(url, restarted, log)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            for case_id in acknowledged:
                case = client.get(f"/api/cases/{case_id}")
                assert case.status_code == 200, case_id
                assert case.json()["reports"], case_id
                assert client.get(f"/api/cases/{case_id}/image").status_code == 200
    finally:
        stop_process(restarted)
