"""The command line, run as a user runs it: the installed ``dermfm`` script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DERMFM = Path(sys.executable).parent / "dermfm"
EXAMPLE = Path(__file__).resolve().parents[1] / "src/dermfm/examples/synthetic_lesion.jpg"


def dermfm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DERMFM), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not DERMFM.exists():
        pytest.skip("the dermfm console script is not installed in this environment")


def test_models_lists_the_registry_as_json_and_table() -> None:
    result = dermfm("models", "--json")
    assert result.returncode == 0
    names = {row["name"] for row in json.loads(result.stdout)}
    assert {"dermlip-vit-b16", "make", "biomedclip", "monet", "medsiglip-448"} <= names
    table = dermfm("models")
    assert "dermlip-vit-b16" in table.stdout and "loads from" in table.stdout


def test_diagnose_json_with_a_failed_input(tiny_open_clip: Path, real_images, image_files) -> None:
    good = real_images[0][0]
    result = dermfm(
        "diagnose",
        good,
        image_files["text"],
        "--model",
        tiny_open_clip,
        "--labels",
        "ham7",
        "--top-k",
        "3",
        "--json",
    )
    assert result.returncode == 1  # some inputs failed
    payload = json.loads(result.stdout)
    assert [r["source"] for r in payload] == [str(good), str(image_files["text"])]
    assert len(payload[0]["predictions"]) == 3 and payload[0]["error"] is None
    assert payload[1]["error"] == "not a recognised image format"
    assert f"{image_files['text']}: not a recognised image format" in result.stderr


def test_diagnose_table_shows_scores_rollup_and_disclaimer(tiny_open_clip: Path) -> None:
    result = dermfm("diagnose", EXAMPLE, "--model", tiny_open_clip, "--labels", "pad6")
    assert result.returncode == 0, result.stderr
    assert "score (uncalibrated)" in result.stdout
    assert "malignancy roll-up" in result.stdout
    assert "not a diagnosis" in result.stdout


def test_diagnose_uses_the_bundled_model_by_default() -> None:
    result = dermfm("diagnose", EXAMPLE, "--json")
    assert result.returncode == 0, result.stderr
    [payload] = json.loads(result.stdout)
    assert payload["model"] == "dermfm-bundled" and payload["error"] is None
    probs = [p["probability"] for p in payload["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    assert abs(sum(payload["malignancy"].values()) - 1) < 1e-3


def test_concepts_json(tiny_open_clip: Path, real_images) -> None:
    result = dermfm(
        "concepts",
        real_images[1][0],
        "--model",
        tiny_open_clip,
        "--concepts",
        "derm7pt,hair",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)[0]["scores"]
    assert {s["group"] for s in scores} == {"derm7pt", "artifact"}
    assert all(0 <= s["score"] <= 1 for s in scores)


def test_index_build_add_search(tiny_open_clip: Path, real_images, tmp_path: Path) -> None:
    folder = tmp_path / "library"
    folder.mkdir()
    for path, _ in real_images[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    build = dermfm("index", "build", tmp_path / "idx", folder, "--model", tiny_open_clip, "--json")
    assert build.returncode == 0, build.stderr
    assert json.loads(build.stdout)["added"] == 6
    add = dermfm("index", "add", tmp_path / "idx", real_images[7][0], "--json")
    assert json.loads(add.stdout) == {"added": 1, "duplicates": [], "errors": [], "total": 7}
    search = dermfm(
        "index", "search", tmp_path / "idx", "--image", real_images[7][0], "-k", "2", "--json"
    )
    hits = json.loads(search.stdout)
    assert hits[0]["path"] == str(real_images[7][0]) and len(hits) == 2
    text = dermfm("index", "search", tmp_path / "idx", "--text", "scale")
    assert text.returncode == 0 and "rank" in text.stdout
    both = dermfm("index", "search", tmp_path / "idx")
    assert both.returncode == 2 and "exactly one of --text or --image" in both.stderr


def test_bad_label_set_is_a_usage_error(tiny_open_clip: Path) -> None:
    result = dermfm("diagnose", EXAMPLE, "--model", tiny_open_clip, "--labels", "nonsense")
    assert result.returncode == 2 and "not a packaged label set" in result.stderr


def test_eval_writes_report_and_exports_clip_benchmark_layout(
    tiny_open_clip: Path, shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = dermfm(
        "eval",
        "-m",
        tiny_open_clip,
        "-d",
        "ham10000",
        "--root",
        shared_data,
        "--max-images",
        "30",
        "-t",
        "zeroshot",
        "-t",
        "fairness",
        "--set",
        "n_boot=20",
        "-o",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert "balanced accuracy" in result.stdout and "ham10000" in result.stdout
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["n_images"] == 30 and "fairness" in run and "calibration" not in run
    assert (out / "report.html").is_file()

    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        json.dumps(
            {
                "models": ["not-used-because-overridden"],
                "datasets": [
                    {
                        "dataset": "derm7pt",
                        "root": str(shared_data),
                        "val_split": None,
                        "tasks": ["zeroshot", "concepts"],
                    },
                ],
                "tasks": ["zeroshot", "concepts", "retrieval"],
                "output": str(tmp_path / "from-file"),
            }
        )
    )
    overridden = dermfm(
        "eval",
        run_file,
        "-m",
        tiny_open_clip,
        "-t",
        "zeroshot",
        "--max-images",
        "12",
        "--set",
        "n_boot=10",
    )
    assert overridden.returncode == 0, overridden.stderr
    (run,) = json.loads((tmp_path / "from-file" / "results.json").read_text())["runs"]
    assert run["n_images"] == 12 and "concepts" not in run and "zeroshot" in run

    bad = dermfm("eval", "-d", "no_such_dataset", "--root", shared_data, "-o", tmp_path / "b")
    assert bad.returncode == 1 and "no_such_dataset" in bad.stderr

    wds = tmp_path / "wds"
    exported = dermfm(
        "data", "export-wds", "derm7pt", wds, "--root", shared_data, "--split", "test"
    )
    assert exported.returncode == 0, exported.stderr
    assert (wds / "test" / "nshards.txt").is_file() and not (wds / "train").exists()
    classnames = (wds / "classnames.txt").read_text().splitlines()
    assert "melanoma" in classnames
    again = dermfm("data", "export-wds", "derm7pt", wds, "--root", shared_data, "--split", "test")
    assert again.returncode == 2 and "exist" in again.stderr


def test_sae_train_name_gallery_explain_bottleneck_suppress(
    tiny_open_clip: Path, shared_data: Path, tmp_path: Path
) -> None:
    sae = tmp_path / "sae"
    trained = dermfm(
        "sae",
        "train",
        sae,
        "-m",
        tiny_open_clip,
        "-d",
        "derm7pt",
        "--root",
        shared_data,
        "--set",
        "n_latents=64",
        "--set",
        "k=4",
        "--set",
        "epochs=3",
    )
    assert trained.returncode == 0, trained.stderr
    assert "fve" in trained.stdout and "recovered" in trained.stdout
    assert (sae / "sae_config.json").is_file()

    named = dermfm("sae", "name", sae, "--top", "3")  # the model comes from the SAE's metadata
    assert named.returncode == 0, named.stderr
    assert (sae / "names.csv").is_file() and "latent" in named.stdout

    gallery = dermfm(
        "sae",
        "gallery",
        sae,
        tmp_path / "gallery",
        "-d",
        "derm7pt",
        "--root",
        shared_data,
        "--max-latents",
        "5",
    )
    assert gallery.returncode == 0, gallery.stderr
    assert (tmp_path / "gallery" / "index.html").is_file()

    image = next((shared_data / "derm7pt" / "images").iterdir())
    explained = dermfm("sae", "explain", sae, image, "--json")
    assert explained.returncode == 0, explained.stderr
    (entry,) = json.loads(explained.stdout)
    assert entry["image"] == str(image) and len(entry["latents"]) <= 10

    cbm = dermfm(
        "sae", "bottleneck", sae, "-d", "derm7pt", "--root", shared_data, "--n-boot", "20", "--json"
    )
    assert cbm.returncode == 0, cbm.stderr
    assert "paired" in json.loads(cbm.stdout)["comparison"]

    suppressed = dermfm(
        "sae",
        "suppress",
        sae,
        "-d",
        "derm7pt",
        "--root",
        shared_data,
        "--split",
        "test",
        "--images",
        "10",
        "--min-effect",
        "0",
    )
    assert suppressed.returncode == 0, suppressed.stderr
    assert (sae / "artifacts.json").is_file()
    dx = dermfm("diagnose", image, "-m", tiny_open_clip, "--sae", sae, "--labels", "ham7", "--json")
    assert dx.returncode == 0, dx.stderr
    assert json.loads(dx.stdout)[0]["suppressed"]
