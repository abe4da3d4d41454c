"""The server's store on a real SQLite file: users and tokens, cases that only grow, search,
delete and export, migrations matching the models, metadata-free images (GPS removed) and
saved cases surviving a SIGKILL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import images as drawn
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import text, update

from dermfm.assistant.conversation import Case, CaseError
from dermfm.assistant.report import Message, PatientDetails
from dermfm.errors import ImageError
from dermfm.server.db import Base, TokenRow, make_engine, migrate
from dermfm.server.images import ImageStore, strip_metadata
from dermfm.server.store import Database, SqlCaseStore, User, UserError

REPO = Path(__file__).resolve().parents[1]
GPS_IFD = 0x8825


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path):
    """Every store test runs on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'dermfm.db'}"
    else:
        url = request.getfixturevalue("postgres_server")()
    database = Database(url)
    database.create_user("alice", "clinician", "alice-password")
    database.create_user("bob", "clinician", "bob-password")
    database.create_user("root", "admin", "root-password")
    yield database
    database.close()


@pytest.fixture
def images(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def store(db: Database, images: ImageStore) -> SqlCaseStore:
    return SqlCaseStore(db, images, "alice")


def _png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _report(sample_report, case_id: str, top: str | None = None, **changes):
    """The sample report for another case, optionally with another top candidate name."""
    report = sample_report.model_copy(update={"case_id": case_id, **changes}, deep=True)
    if top is not None:
        report.differential.candidates[0].name = top
    return report


def _case(store: SqlCaseStore, sample_report, case_id: str, image: bytes | None = None, **kw):
    stored = store.store_image(case_id, (image, f"{case_id}.png")) if image else None
    return Case(
        case_id=case_id,
        source=kw.pop("source", f"{case_id}.jpg"),
        image=stored,
        reports=[_report(sample_report, case_id, kw.pop("top", None))],
        **kw,
    )


def _count(db: Database, table: str, case_id: str) -> int:
    with db.engine.connect() as connection:
        return connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE case_id = :c"), {"c": case_id}
        ).scalar_one()


# --- users and tokens -------------------------------------------------------------------------


def test_passwords_are_hashed_and_checked(db: Database) -> None:
    assert db.verify_password("alice", "alice-password") == User("alice", "clinician")
    assert db.verify_password("root", "root-password") == User("root", "admin")
    assert db.verify_password("alice", "bob-password") is None
    assert db.verify_password("alice", "alice-password ") is None
    assert db.verify_password("nobody", "alice-password") is None
    assert db.user_exists("bob") and not db.user_exists("nobody")
    with db.engine.connect() as connection:
        stored = connection.execute(text("SELECT password_hash FROM users")).scalars().all()
    assert len(set(stored)) == 3
    assert all(h.startswith("$argon2id$v=19$m=19456,t=2,p=1$") for h in stored)
    assert not any("password" in h for h in stored)

    with pytest.raises(UserError, match="already exists"):
        db.create_user("alice", "admin", "another-password")
    with pytest.raises(UserError, match="role 'superuser'"):
        db.create_user("carol", "superuser", "carol-password")
    with pytest.raises(UserError, match="at least 8"):
        db.create_user("carol", "clinician", "short")
    with pytest.raises(UserError, match="user name"):
        db.create_user("../carol", "clinician", "carol-password")
    assert not db.user_exists("carol")


def test_tokens_are_stored_hashed_and_expire(db: Database) -> None:
    raw, expires = db.create_token("alice", days=90, kind="api")
    assert db.resolve_token(raw) == User("alice", "clinician")
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM tokens")).mappings().all()
    assert len(rows) == 1
    assert rows[0]["token_sha256"] == hashlib.sha256(raw.encode()).hexdigest()
    assert rows[0]["kind"] == "api"
    assert raw not in json.dumps([dict(r) for r in rows])

    assert db.resolve_token(raw + "x") is None
    assert db.resolve_token("") is None

    # a token living a few milliseconds has expired by the time it is used
    brief, _ = db.create_token("bob", hours=1e-6)
    assert db.resolve_token(brief) is None

    # time travel: a valid token whose expiry is moved into the past stops working
    login, _ = db.create_token("root", hours=8)
    assert db.resolve_token(login) == User("root", "admin")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(timespec="seconds")
    with db.transaction() as session:
        session.execute(
            update(TokenRow)
            .where(TokenRow.token_sha256 == hashlib.sha256(login.encode()).hexdigest())
            .values(expires_at=past)
        )
    assert db.resolve_token(login) is None
    assert db.resolve_token(raw) is not None

    with pytest.raises(UserError, match="no user nobody"):
        db.create_token("nobody", days=1)
    with pytest.raises(ValueError, match="either days or hours"):
        db.create_token("alice", days=1, hours=1)
    with pytest.raises(ValueError, match="positive"):
        db.create_token("alice", days=0)


def test_audit_log(db: Database) -> None:
    db.audit("alice", "create", "c1", "source=a.jpg")
    db.audit("root", "view", "c1")
    db.audit("bob", "create", "c2")
    db.audit("root", "token", None, "for=bob")
    entries = db.audit_entries("c1")
    assert [(e["actor"], e["action"], e["detail"]) for e in entries] == [
        ("alice", "create", "source=a.jpg"),
        ("root", "view", ""),
    ]
    assert [e["case_id"] for e in db.audit_entries()] == ["c1", "c1", "c2", None]
    assert set(entries[0]) == {"time", "actor", "action", "case_id", "detail"}


def test_accounts_are_disabled_deleted_and_handed_over(
    db: Database, store: SqlCaseStore, sample_report
) -> None:
    from dermfm.server.store import NoSuchUser

    store.save(_case(store, sample_report, "a1"))
    token = db.create_token("alice", days=1, kind="api")[0]
    kept = db.create_token("bob", days=1, kind="api")[0]
    other = db.create_token("bob", days=1, kind="api")[0]

    assert db.set_password("bob", "a brand new phrase", actor="bob", keep_token=kept) == 1
    assert db.resolve_token(kept) is not None and db.resolve_token(other) is None
    assert db.verify_password("bob", "a brand new phrase") == User("bob", "clinician")

    db.set_status("alice", "disabled", actor="root")
    assert db.resolve_token(token) is None and db.verify_password("alice", "alice-password") is None
    assert not db.user_exists("alice")
    db.set_status("alice", "active", actor="root")
    assert db.verify_password("alice", "alice-password") == User("alice", "clinician")

    with pytest.raises(UserError, match="last active admin"):
        db.set_status("root", "disabled", actor="cli")
    with pytest.raises(UserError, match="cannot hand"):
        db.delete_user("alice", actor="root", transfer_to="nobody")
    assert db.delete_user("alice", actor="root", transfer_to="bob") == 1
    assert store.owner_of("a1") == "bob"
    accounts = {a["name"]: a for a in db.users()}
    assert accounts["alice"]["status"] == "deleted" and accounts["bob"]["cases"] == 1
    assert db.verify_password("alice", "alice-password") is None
    with pytest.raises(UserError, match="already exists"):
        db.create_user("alice", "clinician", "a new alice phrase")
    with pytest.raises(NoSuchUser):
        db.set_status("alice", "active", actor="root")
    actions = [(e["actor"], e["action"]) for e in db.audit_entries()]
    assert actions == [
        ("bob", "password"),
        ("root", "user_disable"),
        ("root", "user_enable"),
        ("root", "user_delete"),
    ]


def test_expired_tokens_are_purged(db: Database) -> None:
    fresh = db.create_token("alice", days=1)[0]
    with db.transaction() as session:
        session.add(
            TokenRow(
                user_name="bob",
                token_sha256="0" * 64,
                kind="login",
                created="2000-01-01T00:00:00+00:00",
                expires_at="2000-01-01T12:00:00+00:00",
            )
        )
    assert db.purge_expired_tokens() == 1
    assert db.resolve_token(fresh) is not None and db.purge_expired_tokens() == 0


def test_an_upgrade_from_revision_0001_keeps_every_account_active(tmp_path: Path) -> None:
    from alembic import command

    from dermfm.server.db import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), "0001")
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO users VALUES ('olga', 'admin', 'scrypt$1$1$1$AA==$AA==', 'x')")
            )
    finally:
        engine.dispose()
    database = Database(url)  # migrates to the newest revision
    try:
        assert database.users() == [
            {"name": "olga", "role": "admin", "status": "active", "created": "x", "cases": 0}
        ]
    finally:
        database.close()


# --- cases ------------------------------------------------------------------------------------


def test_case_round_trip_and_growth(store: SqlCaseStore, sample_report) -> None:
    case = _case(
        store,
        sample_report,
        "0123456789ab",
        image=_png(1),
        patient=PatientDetails(age=54, site="back"),
        messages=[
            Message(role="user", content="Is this mole a worry?"),
            Message(role="assistant", content="It has features a clinician should check."),
        ],
    )
    case.reports.append(_report(sample_report, case.case_id, "melanocytic nevus"))
    store.save(case)
    loaded = store.load(case.case_id)
    assert loaded == case
    assert loaded.reports[1].differential.candidates[0].name == "melanocytic nevus"
    assert store.image_path(loaded).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.owner_of(case.case_id) == "alice"

    # the conversation goes on: new details, messages and a new report version
    case.patient = PatientDetails(age=54, site="back", evolution=["growing"])
    case.messages += [
        Message(role="user", content="It has been growing."),
        Message(role="assistant", content="Growth is a reason to see a dermatologist soon."),
    ]
    case.reports.append(_report(sample_report, case.case_id, status="needs_better_photo"))
    store.save(case)
    store.save(case)  # saving the same case again adds nothing
    assert store.load(case.case_id) == case
    assert _count(store.db, "messages", case.case_id) == 4
    assert _count(store.db, "reports", case.case_id) == 3

    summary = store.summary(case.case_id)
    assert summary["owner"] == "alice" and summary["created"] == case.created
    assert summary["updated"] >= summary["created"]
    assert (summary["messages"], summary["reports"]) == (4, 3)
    assert summary["status"] == "needs_better_photo"
    assert summary["triage_level"] == "urgent"
    assert summary["top_candidate"] == "melanoma"
    assert summary["source"] == "0123456789ab.jpg"
    assert [c.case_id for c in store.list()] == [case.case_id]
    assert SqlCaseStore(store.db, store.images, "bob").list() == []

    with pytest.raises(CaseError, match="no such case"):
        store.load("ffffffffffff")
    with pytest.raises(CaseError, match="no such case"):
        store.owner_of("ffffffffffff")


def test_a_stored_case_only_grows(store: SqlCaseStore, sample_report) -> None:
    case = _case(
        store,
        sample_report,
        "aaaaaaaaaaaa",
        messages=[
            Message(role="user", content="first question"),
            Message(role="assistant", content="first answer"),
        ],
    )
    store.save(case)
    before = store.load(case.case_id)

    rewritten = before.model_copy(deep=True)
    rewritten.messages[0] = Message(role="user", content="a different question")
    rewritten.messages.append(Message(role="user", content="more"))
    shorter = before.model_copy(update={"messages": before.messages[:1]}, deep=True)
    fewer_reports = before.model_copy(update={"reports": []}, deep=True)
    changed_report = before.model_copy(deep=True)
    changed_report.reports[0].triage.level = "routine"
    other_source = before.model_copy(update={"source": "other.jpg"}, deep=True)
    for bad in (rewritten, shorter, fewer_reports, changed_report, other_source):
        with pytest.raises(CaseError, match="may only grow"):
            store.save(bad)
    assert store.load(case.case_id) == before
    assert _count(store.db, "messages", case.case_id) == 2

    not_stored = _case(store, sample_report, "bbbbbbbbbbbb")
    not_stored.image = "0" * 64 + ".jpg"
    with pytest.raises(CaseError, match="not in"):
        store.save(not_stored)
    with pytest.raises(CaseError, match="no user ghost"):
        SqlCaseStore(store.db, store.images, "ghost").save(_case(store, sample_report, "cccc"))


def test_search(db: Database, images: ImageStore, sample_report) -> None:
    alice = SqlCaseStore(db, images, "alice")
    bob = SqlCaseStore(db, images, "bob")
    specs = [
        (alice, "a1", "2026-01-01T10:00:00+00:00", "back", "melanoma", "it itches at night"),
        (alice, "a2", "2026-01-02T10:00:00+00:00", "face", "basal cell carcinoma", "no change"),
        (bob, "b1", "2026-01-03T10:00:00+00:00", "back", "seborrheic keratosis", "50%_off"),
        (alice, "a3", "2026-01-04T10:00:00+00:00", "left arm", "melanoma", "growing fast"),
    ]
    for owner, case_id, created, site, top, said in specs:
        case = _case(
            owner,
            sample_report,
            case_id,
            created=created,
            source=f"uploads/{case_id}-photo.JPG",
            top=top,
            patient=PatientDetails(site=site),
            messages=[Message(role="user", content=said)],
        )
        owner.save(case)

    def ids(query, **kw):
        total, cases = alice.search(query, **kw)
        return total, [c.case_id for c in cases]

    assert ids(None) == (4, ["a3", "b1", "a2", "a1"])  # newest first
    assert ids("") == ids("   ")
    assert ids("MELANOMA") == (2, ["a3", "a1"])
    assert ids("melanoma back") == (1, ["a1"])  # every word must match
    assert ids("site: back") == (2, ["b1", "a1"])
    assert ids("itches") == (1, ["a1"])
    assert ids("a2-photo") == (1, ["a2"])
    assert ids("basal cell") == (1, ["a2"])
    assert ids("nevus") == (0, [])  # only top candidates are searched
    assert ids("%") == (1, ["b1"])  # LIKE wildcards are matched literally
    assert ids("0%_o") == (1, ["b1"])
    assert ids("a_1") == (0, [])
    assert ids("melanoma", owner="bob") == (0, [])
    assert ids("back", owner="bob") == (1, ["b1"])
    assert ids(None, limit=2, offset=1) == (4, ["b1", "a2"])
    assert ids(None, limit=2, offset=4) == (4, [])
    with pytest.raises(ValueError, match="negative"):
        alice.search("x", limit=-1)


def test_delete_removes_everything_but_the_audit_and_shared_images(
    store: SqlCaseStore, sample_report
) -> None:
    shared_image, own_image = _png(7), _png(8)
    first = _case(store, sample_report, "d1", image=shared_image)
    second = _case(store, sample_report, "d2", image=shared_image)
    third = _case(store, sample_report, "d3", image=own_image)
    for case in (first, second, third):
        case.messages.append(Message(role="user", content=f"about {case.case_id}"))
        store.save(case)
        store.db.audit("alice", "create", case.case_id)
    assert first.image == second.image != third.image
    shared_file, own_file = store.image_path(first), store.image_path(third)
    assert shared_file.is_file() and own_file.is_file()

    store.delete("d3")
    assert not own_file.exists()
    with pytest.raises(CaseError, match="no such case"):
        store.load("d3")
    assert (_count(store.db, "messages", "d3"), _count(store.db, "reports", "d3")) == (0, 0)
    assert [e["action"] for e in store.db.audit_entries("d3")] == ["create"]

    store.delete("d1")
    assert shared_file.is_file()  # d2 still uses it
    assert store.load("d2") == second
    store.delete("d2")
    assert not shared_file.exists()
    assert store.search()[0] == 0
    with pytest.raises(CaseError, match="no such case"):
        store.delete("d2")


def test_export_zip(store: SqlCaseStore, sample_report) -> None:
    case = _case(
        store,
        sample_report,
        "e1",
        image=_png(3),
        messages=[Message(role="user", content="what is it?")],
    )
    store.save(case)
    store.db.audit("alice", "create", "e1", "source=e1.png")
    store.db.audit("alice", "create", "other")
    store.db.audit("root", "export", "e1")

    with zipfile.ZipFile(io.BytesIO(store.export("e1"))) as archive:
        names = set(archive.namelist())
        assert names == {
            "case.json",
            "image.png",
            "report.md",
            "soap.md",
            "handout.md",
            "referral.md",
            "audit.json",
        }
        assert Case.model_validate_json(archive.read("case.json")) == case
        assert archive.read("image.png") == store.image_path(case).read_bytes()
        report_md = archive.read("report.md").decode()
        audit = json.loads(archive.read("audit.json"))
        handout = archive.read("handout.md").decode()
    assert "melanoma" in report_md and sample_report.disclaimer in report_md
    assert "melanoma" in handout
    assert [(e["actor"], e["action"]) for e in audit] == [("alice", "create"), ("root", "export")]

    bare = Case(case_id="e2", source="e2.jpg")
    store.save(bare)
    with zipfile.ZipFile(io.BytesIO(store.export("e2"))) as archive:
        assert set(archive.namelist()) == {"case.json", "audit.json"}


# --- schema -----------------------------------------------------------------------------------


def test_migrations_create_exactly_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'fresh' / 'm.db'}"
    migrate(url)
    migrate(url)  # idempotent
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("0002",)
            ]
            tables = connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'table'")
            ).scalars()
            assert set(tables) == {*Base.metadata.tables, "alembic_version"}
            pragmas = {
                p: connection.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        engine.dispose()
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }


# --- images -----------------------------------------------------------------------------------


@pytest.fixture(params=["drawn", "phone", pytest.param("real", marks=pytest.mark.real_data)])
def camera_jpeg(request: pytest.FixtureRequest) -> Path:
    """A JPEG photo: drawn (600x450), a drawn 4000x3000 phone photo, and (``real_data``) a real
    one."""
    if request.param == "phone":
        return request.getfixturevalue("phone_jpeg")
    photos = request.getfixturevalue(
        "generated_images" if request.param == "drawn" else "real_images"
    )
    return next(path for path, _ in photos if path.suffix.lower() == ".jpg")


def test_gps_and_all_metadata_are_stripped(camera_jpeg: Path, tmp_path: Path) -> None:
    source = camera_jpeg
    with Image.open(source) as original:
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"  # Make
        exif[0x0132] = "2026:01:02 03:04:05"  # DateTime
        gps = exif.get_ifd(GPS_IFD)
        gps[1] = "N"  # GPSLatitudeRef
        gps[2] = (51.0, 30.0, 12.5)  # GPSLatitude
        gps[3] = "W"  # GPSLongitudeRef
        gps[4] = (0.0, 7.0, 39.0)  # GPSLongitude
        buffer = io.BytesIO()
        original.save(buffer, format="JPEG", exif=exif, comment=b"patient J. Doe")
        size = original.size
    tagged = buffer.getvalue()
    with Image.open(io.BytesIO(tagged)) as check:  # the test image really carries a position
        assert check.getexif().get_ifd(GPS_IFD)[2] == (51.0, 30.0, 12.5)
        assert b"J. Doe" in check.info["comment"]

    clean, extension = strip_metadata(tagged, "phone.jpg")
    assert extension == ".jpg"
    with Image.open(io.BytesIO(clean)) as stripped:
        assert stripped.format == "JPEG"
        assert stripped.size == size
        assert len(stripped.getexif()) == 0
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(stripped.info)
    for marker in (b"Exif", b"PhoneMaker", b"J. Doe", b"2026:01:02"):
        assert marker not in clean

    stored = ImageStore(tmp_path / "images")
    sha = stored.put(tagged, "phone.jpg")
    assert sha == hashlib.sha256(clean).hexdigest()
    assert stored.path(sha) == tmp_path / "images" / sha[:2] / f"{sha}.jpg"
    assert stored.path(sha).read_bytes() == clean


@pytest.mark.parametrize("fmt", ["WEBP", "HEIF", "PNG"])
def test_gps_is_stripped_from_webp_heic_and_png(fmt: str) -> None:
    """Phone photos also come as HEIC and WebP (and PNG may carry an EXIF chunk): the stored
    file has the pixels, upright, and no camera, date or position."""
    if fmt == "HEIF" and not drawn.heic_available():
        pytest.skip("HEIC needs the pillow-heif package (pip install pillow-heif)")
    image = drawn.skin_photo(400, 300, kind="nv", seed=3, tone="IV", ruler=True)
    # HEIF turns images by its own transform boxes, never by the EXIF orientation
    sideways = fmt != "HEIF"
    tagged = drawn.encode(image, fmt, exif=drawn.camera_exif(orientation=6 if sideways else None))
    with Image.open(io.BytesIO(tagged)) as check:  # the upload really carries a position
        assert check.getexif().get_ifd(GPS_IFD)[2] == drawn.GPS_LATITUDE
    clean, extension = strip_metadata(tagged, f"photo.{fmt.lower()}")
    assert extension == (".png" if fmt == "PNG" else ".jpg")
    with Image.open(io.BytesIO(clean)) as stripped:
        assert stripped.size == ((300, 400) if sideways else (400, 300))  # turned upright
        assert len(stripped.getexif()) == 0 and "exif" not in stripped.info
    for marker in (b"Exif", *(part.encode() for part in drawn.CAMERA), b"2026:01:02"):
        assert marker not in clean


def test_png_text_and_orientation(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Location", "51.5N 0.1W")
    buffer = io.BytesIO()
    Image.open(io.BytesIO(_png(2, (40, 30)))).save(
        buffer, format="PNG", pnginfo=info, icc_profile=b"not really a profile"
    )
    clean, extension = strip_metadata(buffer.getvalue(), "scan.png")
    assert extension == ".png"
    with Image.open(io.BytesIO(clean)) as stripped:
        assert stripped.size == (40, 30)
        assert not stripped.info.get("Location") and "icc_profile" not in stripped.info
    assert b"51.5N" not in clean

    # a photo taken sideways (EXIF orientation 6) is stored upright, without the EXIF
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = io.BytesIO()
    Image.open(io.BytesIO(_png(3, (40, 30)))).save(sideways, format="WEBP", exif=exif)
    clean, extension = strip_metadata(sideways.getvalue(), "sideways.webp")
    with Image.open(io.BytesIO(clean)) as upright:
        assert (extension, upright.format, upright.size) == (".jpg", "JPEG", (30, 40))
        assert len(upright.getexif()) == 0


def test_heic_becomes_jpeg() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    heic = io.BytesIO()
    Image.open(io.BytesIO(_png(4, (40, 30)))).save(heic, format="HEIF")
    clean, extension = strip_metadata(heic.getvalue(), "phone.heic")
    with Image.open(io.BytesIO(clean)) as converted:
        assert (extension, converted.format, converted.size) == (".jpg", "JPEG", (40, 30))


def test_image_store(tmp_path: Path, image_files) -> None:
    store = ImageStore(tmp_path / "images")
    data = _png(5)
    sha = store.put(data, "a.png")
    assert store.put(data, "copy.png") == sha
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [f"{sha}.png"]
    assert store.sha_of(store.path(sha)) == sha
    assert store.sha_of(image_files["png"]) is None
    with pytest.raises(ImageError, match=r"notes\.png: not a recognised"):
        store.put(image_files["text"].read_bytes(), "notes.png")
    with pytest.raises(ImageError, match=r"truncated\.jpg: truncated"):
        store.put(image_files["truncated"].read_bytes(), "truncated.jpg")
    with pytest.raises(ValueError, match="SHA-256"):
        store.path("../../etc/passwd")
    assert store.delete(sha) and store.path(sha) is None and not store.delete(sha)


def test_store_image_accepts_files_uploads_and_stored_files(
    store: SqlCaseStore, image_files
) -> None:
    from_file = store.store_image("f1", image_files["bmp"])
    from_upload = store.store_image("f2", (image_files["bmp"].read_bytes(), "x.bmp"))
    assert from_file == from_upload and from_file.endswith(".png")
    stored_jpeg = store.store_image("f3", image_files["jpg"])
    path = store.images.root / stored_jpeg[:2] / stored_jpeg
    assert store.store_image("f4", path) == stored_jpeg  # not re-encoded a second time
    assert len([p for p in store.images.root.rglob("*") if p.is_file()]) == 2
    assert store.store_image("f5", image_files["missing"]) is None
    assert store.store_image("f6", Image.new("RGB", (4, 4))) is None


# --- durability -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from dermfm.assistant.conversation import Case
    from dermfm.assistant.report import ConsultReport, Message
    from dermfm.server.images import ImageStore
    from dermfm.server.store import Database, SqlCaseStore

    url, images, report_file = sys.argv[1:4]
    report = ConsultReport.model_validate_json(open(report_file).read())
    store = SqlCaseStore(Database(url), ImageStore(images), "writer")
    number = 0
    while True:
        case_id = f"{number:012x}"
        case = Case(
            case_id=case_id,
            source=f"lesion-{number}.jpg",
            messages=[
                Message(role="user", content=f"question {number}"),
                Message(role="assistant", content=f"answer {number}"),
            ],
            reports=[report.model_copy(update={"case_id": case_id})],
        )
        store.save(case)
        case.messages.append(Message(role="user", content=f"follow-up {number}"))
        store.save(case)
        print(case_id, flush=True)
        number += 1
    """
)


def test_acknowledged_saves_survive_sigkill(tmp_path: Path, sample_report) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    setup = Database(url)
    setup.create_user("writer", "clinician", "writer-password")
    setup.close()
    report_file = tmp_path / "report.json"
    report_file.write_text(sample_report.model_dump_json())
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(tmp_path / "images"), str(report_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        rest, errors = writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL, errors
    acknowledged += rest.split()  # printed before the kill, so acknowledged too
    assert len(acknowledged) >= 30, errors

    database = Database(url)
    try:
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        store = SqlCaseStore(database, ImageStore(tmp_path / "images"), "writer")
        for number, case_id in enumerate(acknowledged):
            case = store.load(case_id)
            assert case.source == f"lesion-{number}.jpg"
            assert [m.content for m in case.messages] == [
                f"question {number}",
                f"answer {number}",
                f"follow-up {number}",
            ]
            assert case.reports == [sample_report.model_copy(update={"case_id": case_id})]
        total, _ = store.search()
        assert total - len(acknowledged) in (0, 1)  # at most one saved but not yet printed
    finally:
        database.close()
