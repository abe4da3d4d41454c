"""Reliability of the server: schemathesis against its OpenAPI spec finds no server error, and a
server killed with SIGKILL in the middle of writes loses no acknowledged case."""

from __future__ import annotations

import csv
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import images as drawn
import pytest

import dermfm

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


@pytest.fixture(params=["drawn", pytest.param("real", marks=pytest.mark.real_data)])
def upload_photos(request: pytest.FixtureRequest, tmp_path: Path) -> list[Path]:
    """40 distinct photos to upload: drawn JPEGs (every lesion kind and skin type, some with a
    ruler and camera EXIF with GPS), and (``real_data``) the first 40 HAM10000 photos."""
    if request.param == "drawn":
        kinds, tones = list(drawn.LESIONS), list(drawn.SKIN_TONES)
        return [
            drawn.save(
                drawn.skin_photo(
                    320, 240, kind=kinds[i % 7], seed=i, tone=tones[i % 6], ruler=i % 3 == 0
                ),
                tmp_path / "photos" / f"upload_{i:02d}.jpg",
                exif=drawn.camera_exif() if i % 2 else None,
            )
            for i in range(40)
        ]
    shared_data = request.getfixturevalue("shared_data")
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:40]
    return [shared_data / "ham10000" / r["file"] for r in rows]


def test_sigkill_during_writes_loses_no_acknowledged_case(
    upload_photos: list[Path], tmp_path: Path
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
    photos = upload_photos
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


STRACE = shutil.which("strace")
# one traced system call: "[pid N] name(args) = result", possibly split into "<unfinished ...>"
# and "<... name resumed>" lines when threads interleave
_CALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(?:(\w+)\((.*)|<\.\.\. (\w+) resumed>(.*))$")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")


def _trace_events(trace: Path) -> list[tuple[str, str, str]]:
    """``(call, path of its first argument, its text)`` per completed call, in completion order
    (a call split by other threads' calls counts where it resumed, with its whole text)."""
    events, pending = [], {}
    for line in trace.read_text(errors="replace").splitlines():
        found = _CALL.match(line.strip())
        if not found:
            continue
        pid, name, args, resumed, rest = found.groups()
        if name and line.rstrip().endswith("<unfinished ...>"):
            pending[pid] = (name, args)
            continue
        if resumed:
            name, args = pending.pop(pid, (resumed, ""))
            args += rest
        path = _FD_PATH.match(args)
        events.append((name, path.group(1) if path else "", f"{name}({args}"))
    return events


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")
def test_every_acknowledged_upload_is_on_disk_before_the_answer(
    tmp_path: Path,
) -> None:
    """A SIGKILL leaves the page cache intact, so only the system calls show durability: for
    each acknowledged case, the stored image was fsynced before it was renamed into place, its
    folder (and a folder created for it, in its parent) was fsynced after, and the database's
    write-ahead log was fsynced after that, all before the 201 answer was written."""
    from PIL import Image

    if not DERMFM.exists():
        pytest.skip("the dermfm console script is not installed")
    data = tmp_path / "data"
    user = _dermfm("server", "user", "add", "w", "--password-stdin", data=data, input="pw-w-123\n")
    assert user.returncode == 0, user.stderr
    token = _dermfm("server", "token", "create", "w", data=data).stdout.strip()
    example = Image.open(Path(dermfm.__file__).parent / "examples" / "synthetic_lesion.jpg")
    uploads = []
    for turn in (0, 90, 180, 270):  # distinct photos: each one stored anew
        path = tmp_path / f"lesion-{turn}.jpg"
        example.rotate(turn, expand=True).save(path, quality=92)
        uploads.append(path)
    port, trace, log = free_port(), tmp_path / "trace.txt", tmp_path / "serve.log"
    calls = (
        "trace=openat,fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,"
        "write,writev,sendto,sendmsg"
    )
    command = [
        STRACE,
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-yy",
        "-s",
        "48",
        "-e",
        calls,
        "-o",
        str(trace),
    ]
    with log.open("ab") as out:
        server = subprocess.Popen(
            [*command, str(DERMFM), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log, timeout=300)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            for photo in uploads:  # one at a time: the n-th 201 answers the n-th upload
                answer = client.post(
                    "/api/cases", files={"image": (photo.name, photo.read_bytes())}, timeout=600
                )
                assert answer.status_code == 201, answer.text
    finally:
        stop_process(server)

    events = _trace_events(trace)
    answers = [
        i
        for i, (name, path, line) in enumerate(events)
        if name in ("write", "writev", "sendto", "sendmsg")
        and "TCP" in path
        and "HTTP/1.1 201" in line
    ]
    assert len(answers) == len(uploads), "one 201 answer per upload"
    images_root = str(data.resolve() / "images")
    start = 0
    for number, answer in enumerate(answers, 1):
        window = events[start:answer]
        renamed = [
            (i, quoted)
            for i, (name, _, line) in enumerate(window)
            if name.startswith("rename")
            and len(quoted := re.findall(r'"([^"]+)"', line)) >= 2
            and quoted[-1].startswith(images_root)
        ]
        assert len(renamed) == 1, f"upload {number}: one image renamed into place"
        at, (temp, final) = renamed[0][0], renamed[0][1][-2:]
        synced = {path for name, path, _ in window[:at] if name in ("fsync", "fdatasync")}
        assert temp in synced, f"upload {number}: image data fsynced before the rename"
        after = [(name, path) for name, path, _ in window[at:]]
        assert ("fsync", str(Path(final).parent)) in after, f"upload {number}: its folder fsynced"
        created = [
            (i, Path(re.findall(r'"([^"]+)"', line)[0]))
            for i, (name, _, line) in enumerate(window)
            if name.startswith("mkdir") and images_root in line and line.endswith("= 0")
        ]
        for i, folder in created:  # a new folder's entry lives in its parent
            assert any(
                name == "fsync" and path == str(folder.parent) for name, path, _ in window[i:]
            ), f"upload {number}: {folder} created, its parent not synced"
        wal = str(data.resolve() / "dermfm.db-wal")
        assert any(name in ("fsync", "fdatasync") and path == wal for name, path in after), (
            f"upload {number}: the database commit (its write-ahead log) fsynced"
        )
        start = answer
