"""Shared fixtures: tiny real models (random weights, built here, loaded through dermfm's real
loading code), real images from ../shared/data, generated image files.

Tests that prove a headline claim run on photos drawn by ``tests/images.py`` (skin, lesions,
rulers, EXIF/GPS, PNG/WebP/HEIC, phone-size JPEGs), so a clean clone runs them. Their versions on
real photos take ``skin_images`` / ``melanoma_photo``'s ``real`` parameter, marked ``real_data``:
without ``../shared/data`` those, and every test that reads the real datasets through the
``shared_data`` fixture, are deselected (the run's header says so), not skipped: a clean clone's
skips are then only missing optional system parts, each with its reason."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import images as drawn
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

#: The real-photo parameter of fixtures that also run on drawn photos.
REAL = pytest.param("real", marks=pytest.mark.real_data)


def _have_shared_data() -> bool:
    return (SHARED / "README.md").is_file()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_data: the real-photo version of a test that also runs on drawn photos; "
        "deselected when ../shared/data is missing (as is every test using the shared_data "
        "fixture: dataset readers, splits and figures measured on the real test splits)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    if _have_shared_data():
        return f"real data: {SHARED} (tests run on drawn and on real photos)"
    return (
        f"real data: {SHARED} is missing: tests on real photos and datasets (marker "
        "real_data, or the shared_data fixture) are deselected; the drawn-photo versions of "
        "the headline tests run"
    )


def _needs_real_data(item: pytest.Item) -> bool:
    """Marked ``real_data``, or using the real data folder (directly or through a fixture)."""
    return bool(item.get_closest_marker("real_data")) or "shared_data" in getattr(
        item, "fixturenames", ()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _have_shared_data():
        return
    real = [item for item in items if _needs_real_data(item)]
    if real:
        config.hook.pytest_deselected(items=real)
        items[:] = [item for item in items if not _needs_real_data(item)]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches go to a temporary folder; the Hub is never contacted by tests."""
    os.environ["DERMFM_CACHE"] = str(tmp_path_factory.mktemp("dermfm-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dermatology data folder; tests needing it skip when it is absent."""
    if not _have_shared_data():
        pytest.skip(f"real data not available at {SHARED}")
    return SHARED


def _rows(folder: Path, n: int, label_filter: set[str] | None = None) -> list[dict[str, str]]:
    with (folder / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not label_filter or r["label"] in label_filter]
    return rows[:: max(1, len(rows) // n)][:n]


@pytest.fixture(scope="session")
def real_images(shared_data: Path) -> list[tuple[Path, str]]:
    """A small spread of real images: HAM10000 and Derm7pt dermoscopy, DermNet clinical photos."""
    picked = []
    for name, n in (("ham10000", 8), ("derm7pt", 4), ("dermnet_nz", 6)):
        for row in _rows(shared_data / name, n):
            picked.append((shared_data / name / row["file"], row["label"]))
    return picked


@pytest.fixture(scope="session")
def generated_images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """Drawn skin photos with HAM10000 labels (``tests/images.py``): dermoscopy and clinical
    framing, skin types I-VI, rulers, EXIF with GPS, JPEG, PNG, WebP and (with pillow-heif)
    HEIC."""
    return drawn.photo_set(tmp_path_factory.mktemp("drawn-photos"))


@pytest.fixture(scope="session")
def phone_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drawn 4000x3000 phone JPEG of a melanoma-like lesion with a ruler, EXIF and GPS."""
    folder = tmp_path_factory.mktemp("drawn-phone")
    return drawn.save(
        drawn.phone_photo("mel", seed=50), folder / "IMG_0001.jpg", exif=drawn.camera_exif()
    )


@pytest.fixture(scope="session", params=["drawn", REAL])
def skin_images(request: pytest.FixtureRequest) -> list[tuple[Path, str]]:
    """``(path, label)`` photos: the drawn set, and (``real_data``) :func:`real_images`."""
    name = "generated_images" if request.param == "drawn" else "real_images"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session", params=["drawn", REAL])
def melanoma_photo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A melanoma photo: a drawn dermoscopy JPEG, and (``real_data``) a real HAM10000 one."""
    if request.param == "drawn":
        image = drawn.skin_photo(600, 450, kind="mel", seed=7, tone="II", dermoscopy=True)
        return drawn.save(image, tmp_path_factory.mktemp("drawn-melanoma") / "lesion_mel.jpg")
    folder = request.getfixturevalue("shared_data") / "ham10000"
    with (folder / "labels.csv").open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["label"] == "mel")
    return folder / row["file"]


def save_open_clip_folder(folder: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A tiny open_clip CLIP (random weights) in the hf-hub folder layout open_clip loads."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 2,
            "width": 64,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": model_cfg,
                "preprocess_cfg": {
                    "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711],
                },
            }
        )
    )
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random-weight open_clip model."""
    return save_open_clip_folder(tmp_path_factory.mktemp("tiny-open-clip") / "model")


@pytest.fixture(scope="session")
def tiny_transformers_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random-weight transformers CLIPModel with a real CLIP BPE tokenizer."""
    import torch
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = tmp_path_factory.mktemp("tiny-hf-clip")
    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
        ),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def oc_model(tiny_open_clip: Path):
    """The tiny open_clip model loaded through dermfm."""
    import dermfm

    return dermfm.load_model(tiny_open_clip)


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    """Generated image files of several formats plus broken inputs (never copied data)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    files: dict[str, Path] = {}
    for fmt, suffix in (
        ("JPEG", "jpg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("TIFF", "tif"),
        ("BMP", "bmp"),
    ):
        path = tmp_path / f"image.{suffix}"
        rgb.save(path, format=fmt)
        files[suffix] = path
    files["empty"] = tmp_path / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.png"
    files["text"].write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(files["jpg"].read_bytes()[:400])
    files["truncated"] = truncated
    files["missing"] = tmp_path / "does-not-exist.jpg"
    return files


@pytest.fixture
def sample_report():
    """A hand-built consultation report (a pigmented lesion with melanoma in the differential)
    for tests of the assistant's writers and documents."""
    from dermfm.assistant.report import (
        Candidate,
        Characteristic,
        ConditionInfo,
        ConsultReport,
        Differential,
        Limitation,
        Modality,
        Narrative,
        PatientDetails,
        PredictionSet,
        QualityCheck,
        RuleHit,
        SimilarCase,
        Triage,
    )

    candidates = [
        Candidate(
            rank=1,
            label="melanoma",
            name="melanoma",
            node="melanoma",
            probability=0.46,
            in_prediction_set=True,
            malignancy="malignant",
            urgency="urgent",
            category="malignant melanocytic lesion",
        ),
        Candidate(
            rank=2,
            label="melanocytic nevus",
            name="melanocytic nevus",
            node="melanocytic_nevus",
            probability=0.31,
            in_prediction_set=True,
            malignancy="benign",
            urgency="routine",
            category="benign melanocytic lesion",
        ),
        Candidate(
            rank=3,
            label="seborrheic keratosis",
            name="seborrheic keratosis",
            node="seborrheic_keratosis",
            probability=0.12,
            in_prediction_set=False,
            malignancy="benign",
            urgency="routine",
            category="benign keratinocytic lesion",
        ),
    ]
    return ConsultReport(
        case_id="case-0001",
        source="lesion.jpg",
        model="dermfm-bundled",
        status="complete",
        quality=QualityCheck(usable=True, measures={"sharpness": 310.0, "brightness": 0.55}),
        modality=Modality(label="dermoscopy", probability=0.93),
        characteristics=[
            Characteristic(
                id="pigment_network",
                name="pigment network",
                group="dermoscopy",
                score=0.71,
                present=True,
            ),
            Characteristic(
                id="blue_whitish_veil",
                name="blue-whitish veil",
                group="dermoscopy",
                score=0.58,
                present=True,
            ),
        ],
        differential=Differential(
            label_set="all",
            candidates=candidates,
            malignancy={"malignant": 0.5, "benign": 0.45, "not_neoplastic": 0.05},
            probability_kind="calibrated (temperature 2.06 fitted on validation images)",
            calibrated=True,
            prediction_set=PredictionSet(
                labels=["melanoma", "melanocytic nevus"],
                names=["melanoma", "melanocytic nevus"],
                coverage=0.9,
                measured_coverage=0.91,
                method="split conformal (APS)",
                calibrated_on="HAM10000 + DermNet NZ validation splits",
            ),
        ),
        triage=Triage(
            level="urgent",
            fired=[
                RuleHit(
                    rule="malignant-candidate",
                    level="urgent",
                    reason="melanoma (malignant) is ranked 1 with probability 0.46",
                    advice="See a dermatologist promptly (within 2 weeks).",
                )
            ],
            advice="See a dermatologist promptly (within 2 weeks).",
        ),
        similar_cases=[SimilarCase(rank=1, path="/cases/a.jpg", label="mel", similarity=0.83)],
        information=[
            ConditionInfo(
                node="melanoma",
                name="melanoma",
                what_it_is="A skin cancer that starts in pigment cells.",
                usual_course="It can grow and spread if it is not removed early.",
                treatments="Surgical removal; further treatment depends on stage.",
                when_to_seek_care="Promptly, if a mole is new, changing or bleeding.",
                source="melanoma",
            ),
        ],
        limitations=[
            Limitation(
                kind="skin_type",
                message="Skin type not given; the model was mostly trained on lighter skin.",
            )
        ],
        patient=PatientDetails(age=54, site="back", evolution=["growing"]),
        narrative=Narrative(summary="Findings summary.", writer="template"),
        disclaimer="This is decision support, not a diagnosis.",
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server (Debian's postgresql package) on a loopback port; yields
    a function that creates a fresh database and returns its SQLAlchemy URL. Skips when the
    server binaries or psycopg are missing."""
    import glob
    import shutil
    import socket
    import subprocess

    pytest.importorskip("psycopg")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    bin_dir = Path(found[-1]).parent
    as_user: list[str] = []
    import tempfile

    # not under pytest's root-only temp folder: the postgres user must reach it
    folder = Path(tempfile.mkdtemp(prefix="dermfm-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        folder.chmod(0o700)
    data = folder / "cluster"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        **run,
    )
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(folder / "log"),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        ],
        **run,
    )
    import psycopg

    counter = iter(range(10_000))

    def new_database() -> str:
        name = f"dermfm_test_{next(counter)}"
        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

    yield new_database
    subprocess.run(
        [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
        capture_output=True,
        timeout=60,
    )
    shutil.rmtree(folder, ignore_errors=True)
