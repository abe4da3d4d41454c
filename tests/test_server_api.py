"""The REST API on a real server: uvicorn on a loopback port, SQLite on disk, the bundled model.

Covers access control (no, unknown, expired and another user's token), the consult -> chat ->
documents -> export -> delete life of a case with its audit log, EXIF/GPS removal, inference
equal to the library's, limits and error bodies, and schemathesis against the OpenAPI spec.
The case library and the uploads are drawn photos (``tests/images.py``); the uploads are also
made with a real HAM10000 melanoma when ``../shared/data`` is there.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import images as drawn
import pytest
from live_server import start_server
from PIL import Image

pytest.importorskip("fastapi")


@dataclass
class Live:
    url: str
    data: Path
    tokens: dict[str, str]

    def client(self, user: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def build_case_index(folder: Path, photos: list[tuple[Path, str]]) -> Path:
    """A small case library of ``(path, label)`` photos."""
    from dermfm.retrieval import Index

    table = folder / "cases.csv"
    with table.open("w") as out:
        out.write("path,label\n")
        for path, label in photos:
            out.write(f"{path},{label}\n")
    Index.build(folder / "index", table)[0].close()
    return folder / "index"


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, generated_images: list[tuple[Path, str]]
) -> Iterator[Live]:
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

    data = tmp_path_factory.mktemp("server")
    index = build_case_index(tmp_path_factory.mktemp("cases"), generated_images)
    database = Database(ServerSettings(data_dir=data).url)
    tokens = {}
    for name, role in (("alice", "clinician"), ("bob", "clinician"), ("root", "admin")):
        database.create_user(name, role, f"{name}-password")
        tokens[name] = database.create_token(name, days=1, kind="api")[0]
    url, server, thread = start_server(data, cases_index=index)
    yield Live(url, data, tokens)
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def melanoma(melanoma_photo: Path) -> Path:
    """A drawn melanoma JPEG, and (``real_data``) a real HAM10000 one."""
    return melanoma_photo


def with_gps(path: Path) -> bytes:
    """The photo re-saved with a GPS position and a camera make and model in its EXIF."""
    data = drawn.encode(Image.open(path).convert("RGB"), "JPEG", exif=drawn.camera_exif())
    tagged = Image.open(io.BytesIO(data)).getexif()
    assert tagged.get_ifd(drawn.GPS_IFD)[2] == drawn.GPS_LATITUDE  # the GPS block is there
    return data


def test_health_needs_no_token_but_everything_else_does(live: Live) -> None:
    assert httpx.get(live.url + "/api/health").json()["status"] == "ok"
    with live.client(None) as anonymous:
        for method, path in (("GET", "/api/cases"), ("GET", "/api/me"), ("POST", "/api/diagnose")):
            response = anonymous.request(method, path)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
    wrong = httpx.get(live.url + "/api/me", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401 and "unknown or expired" in wrong.json()["error"]["message"]


def test_expired_tokens_are_refused(live: Live) -> None:
    from dermfm.server.db import TokenRow
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database, token_sha256

    database = Database(ServerSettings(data_dir=live.data).url)
    token, _ = database.create_token("alice", hours=1, kind="api")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(live.url + "/api/me", headers=headers).status_code == 200
    with database.transaction() as session:  # an hour later: the token has expired
        row = session.query(TokenRow).filter_by(token_sha256=token_sha256(token)).one()
        row.expires_at = "2000-01-01T00:00:00+00:00"
    response = httpx.get(live.url + "/api/me", headers=headers)
    assert response.status_code == 401


def test_login_gives_a_session_token(live: Live) -> None:
    bad = httpx.post(live.url + "/api/login", json={"username": "alice", "password": "nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    good = httpx.post(
        live.url + "/api/login", json={"username": "alice", "password": "alice-password"}
    )
    assert good.status_code == 200
    headers = {"Authorization": f"Bearer {good.json()['token']}"}
    assert httpx.get(live.url + "/api/me", headers=headers).json() == {
        "name": "alice",
        "role": "clinician",
    }
    assert httpx.post(live.url + "/api/logout", headers=headers).status_code == 204
    assert httpx.get(live.url + "/api/me", headers=headers).status_code == 401  # revoked


def test_a_case_from_upload_to_deletion(live: Live, melanoma: Path) -> None:
    with live.client("alice") as alice, live.client("bob") as bob, live.client("root") as root:
        created = alice.post(
            "/api/cases",
            files={"image": ("mole.jpg", with_gps(melanoma), "image/jpeg")},
            data={"question": "Should I worry?", "age": "61", "site": "back"},
        )
        assert created.status_code == 201, created.text
        case_id = created.json()["case"]["case_id"]
        report = created.json()["report"]
        assert report["status"] == "complete" and report["patient"]["age"] == 61
        assert len(report["similar_cases"]) == 5 and report["similar_cases"][0]["label"]
        assert report["narrative"]["answer"]

        # the stored image has no metadata at all
        stored = alice.get(f"/api/cases/{case_id}/image")
        assert stored.status_code == 200
        image = Image.open(io.BytesIO(stored.content))
        assert len(image.getexif()) == 0 and "exif" not in image.info
        assert image.size == Image.open(melanoma).size
        assert drawn.CAMERA[1].encode() not in stored.content

        # another clinician cannot see it; an admin can
        assert bob.get(f"/api/cases/{case_id}").status_code == 404
        assert bob.delete(f"/api/cases/{case_id}").status_code == 404
        assert root.get(f"/api/cases/{case_id}").status_code == 200
        listed = alice.get("/api/cases", params={"q": "mole"}).json()
        assert case_id in [c["case_id"] for c in listed["cases"]]
        assert case_id not in [c["case_id"] for c in bob.get("/api/cases").json()["cases"]]

        reply = alice.post(
            f"/api/cases/{case_id}/messages", json={"text": "It has been growing for 3 months."}
        )
        assert reply.status_code == 200 and reply.json()["report_updated"]
        patched = alice.patch(f"/api/cases/{case_id}", json={"patient": {"skin_type": "V"}})
        assert patched.status_code == 200
        case = alice.get(f"/api/cases/{case_id}").json()
        assert len(case["reports"]) == 3 and len(case["messages"]) == 4
        assert case["patient"]["skin_type"] == "V"

        pdf = alice.get(f"/api/cases/{case_id}/documents/soap.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert alice.get(f"/api/cases/{case_id}/documents/poem.txt").status_code == 404
        export = alice.get(f"/api/cases/{case_id}/export")
        names = zipfile.ZipFile(io.BytesIO(export.content)).namelist()
        assert "case.json" in names and any(n.startswith("image") for n in names)

        assert alice.delete(f"/api/cases/{case_id}").status_code == 204
        assert alice.get(f"/api/cases/{case_id}").status_code == 404
        actions = [e["action"] for e in root.get("/api/audit", params={"case_id": case_id}).json()]
        assert actions[0] == "create" and actions[-1] == "delete"
        assert {"view", "message", "update", "document", "export"} <= set(actions)
        assert alice.get("/api/audit").status_code == 403


def test_diagnose_and_concepts_equal_the_library(live: Live, melanoma: Path) -> None:
    import dermfm

    expected = dermfm.diagnose(melanoma, labels="assistant")
    with live.client() as alice:
        got = alice.post("/api/diagnose", files={"image": ("m.jpg", melanoma.read_bytes())})
        assert got.status_code == 200
        for a, b in zip(got.json()["predictions"], expected.predictions, strict=True):
            assert a["label"] == b.label and abs(a["probability"] - b.probability) < 1e-4
        concepts = alice.post("/api/concepts", files={"image": ("m.jpg", melanoma.read_bytes())})
        assert concepts.status_code == 200 and concepts.json()["scores"]


def test_a_phone_photo_is_diagnosed_like_the_library_and_stored_without_gps(
    live: Live, phone_jpeg: Path
) -> None:
    """A 4000x3000 phone JPEG with camera EXIF and a GPS position."""
    import dermfm

    expected = dermfm.diagnose(phone_jpeg, labels="assistant")
    upload = phone_jpeg.read_bytes()
    assert Image.open(phone_jpeg).getexif().get_ifd(drawn.GPS_IFD)
    with live.client() as alice:
        got = alice.post("/api/diagnose", files={"image": ("IMG_0001.jpg", upload)})
        assert got.status_code == 200, got.text
        for a, b in zip(got.json()["predictions"], expected.predictions, strict=True):
            assert a["label"] == b.label and abs(a["probability"] - b.probability) < 1e-4
        created = alice.post("/api/cases", files={"image": ("IMG_0001.jpg", upload)})
        assert created.status_code == 201, created.text
        stored = alice.get(f"/api/cases/{created.json()['case']['case_id']}/image").content
    image = Image.open(io.BytesIO(stored))
    assert image.size == (4000, 3000)
    assert len(image.getexif()) == 0 and "exif" not in image.info
    for marker in (b"Exif", *(part.encode() for part in drawn.CAMERA), b"2026:01:02"):
        assert marker not in stored


def test_bad_uploads_get_clear_errors(live: Live, tmp_path: Path) -> None:
    with live.client() as alice:
        text = alice.post("/api/cases", files={"image": ("notes.jpg", b"hello, not a photo")})
        assert text.status_code == 422
        body = text.json()["error"]
        assert body["code"] == "unsupported_image" and "notes.jpg" in body["message"]
        huge = alice.post("/api/diagnose", files={"image": ("big.jpg", b"0" * (16 * 1024 * 1024))})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
        wrong = alice.post("/api/cases/abc/messages", json={"txt": "x"})
        assert wrong.status_code in (404, 422) and "error" in wrong.json()


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

    database = Database(ServerSettings(data_dir=tmp_path).url)
    database.create_user("carol", "clinician", "pw-carol")
    token = database.create_token("carol", days=1, kind="api")[0]
    url, server, thread = start_server(tmp_path, burst=3, rate_per_minute=6)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        codes = [httpx.get(url + "/api/me", headers=headers).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[-1] == 429
        limited = httpx.get(url + "/api/me", headers=headers)
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_models_and_search(live: Live) -> None:
    with live.client() as alice:
        models = alice.get("/api/models").json()
        assert any(m["name"] == "dermfm-bundled" and m["default"] for m in models)
        hits = alice.get("/api/search", params={"q": "melanoma", "k": 3}).json()
        assert len(hits) == 3 and all(h["label"] for h in hits)
        assert hits[0]["score"] >= hits[-1]["score"]


def test_images_over_the_pixel_limit_are_refused(live: Live) -> None:
    buffer = io.BytesIO()
    Image.new("1", (10_001, 10_000)).save(buffer, "PNG")  # 100,010,000 pixels, a small file
    with live.client() as alice:
        response = alice.post("/api/diagnose", files={"image": ("huge.png", buffer.getvalue())})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unsupported_image" and "huge.png" in error["message"]


def test_the_server_runs_on_postgresql(postgres_server, tmp_path: Path, melanoma: Path) -> None:
    from dermfm.server.store import Database

    url = postgres_server()
    database = Database(url)
    database.create_user("dana", "clinician", "dana-password")
    token = database.create_token("dana", days=1, kind="api")[0]
    base, server, thread = start_server(tmp_path, database_url=url)
    try:
        assert httpx.get(base + "/api/health").json()["database"] == "ok"
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as dana:
            created = dana.post("/api/cases", files={"image": ("m.jpg", melanoma.read_bytes())})
            assert created.status_code == 201, created.text
            case_id = created.json()["case"]["case_id"]
            reply = dana.post(f"/api/cases/{case_id}/messages", json={"text": "It itches."})
            assert reply.status_code == 200
            assert len(dana.get(f"/api/cases/{case_id}").json()["messages"]) == 2
            assert dana.delete(f"/api/cases/{case_id}").status_code == 204
        assert [e["action"] for e in database.audit_entries(case_id)][-1] == "delete"
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
