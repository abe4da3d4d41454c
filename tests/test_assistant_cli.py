"""The assistant's commands, run as a user runs them: the installed ``dermfm`` script."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from test_cli import dermfm

HAM_NAMES = {"mel": "melanoma", "nv": "melanocytic nevus", "bcc": "basal cell carcinoma"}


@pytest.fixture(scope="module")
def ham(shared_data: Path) -> list[tuple[Path, str]]:
    picked: dict[str, list[Path]] = {k: [] for k in HAM_NAMES}
    with (shared_data / "ham10000" / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] in picked and len(picked[row["label"]]) < 12:
                picked[row["label"]].append(shared_data / "ham10000" / row["file"])
    return [(p, label) for label, paths in picked.items() for p in paths]


def test_consult_batch_goes_on_past_a_bad_file_and_writes_documents(ham, tmp_path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00 not a photo")
    good = ham[0][0]
    out = tmp_path / "visit"
    args = ["consult", good, broken, "--json", "--age", "54", "--site", "back", "-o", out]
    result = dermfm(*args, "-q", "Should I be worried?")
    assert result.returncode == 1, result.stderr  # one input could not be read
    reports = json.loads(result.stdout)
    assert [r["source"] for r in reports] == [str(good), str(broken)]
    assert reports[0]["status"] == "complete"
    assert reports[0]["patient"]["age"] == 54 and reports[0]["patient"]["site"] == "back"
    assert reports[0]["narrative"]["answer"]
    assert reports[1]["status"] == "needs_better_photo"
    assert reports[1]["quality"]["problems"][0]["kind"] == "unreadable"
    for stem in (good.stem, "broken"):
        names = {p.name for p in (out / stem).iterdir()}
        assert {"report.json", "report.md", "soap.pdf", "handout.md", "referral.pdf"} <= names
    again = dermfm("consult", good, "-o", out / good.stem)
    assert again.returncode == 2 and "exist" in again.stderr  # documents are never overwritten


def test_consult_table_schema_and_option_errors(ham) -> None:
    table = dermfm("consult", ham[0][0])
    assert table.returncode == 0
    assert "Triage:" in table.stdout and "not a diagnosis" in table.stdout
    markdown = dermfm("consult", ham[0][0], "--markdown")
    assert markdown.returncode == 0
    assert markdown.stdout.lstrip().startswith("#") and "| " in markdown.stdout
    schema = json.loads(dermfm("consult", "--schema").stdout)
    assert {"differential", "triage", "quality", "disclaimer"} <= set(schema["properties"])
    bad_age = dermfm("consult", ham[0][0], "--age", "200")
    assert bad_age.returncode == 2 and "age" in bad_age.stderr
    no_url = dermfm("consult", ham[0][0], "--writer", "openai", "--llm-model", "m")
    assert no_url.returncode == 2 and "url" in no_url.stderr


def test_chat_stores_the_case_and_resumes_it(ham, tmp_path) -> None:
    store = tmp_path / "cases"
    first = dermfm(
        "chat",
        ham[0][0],
        "--case-store",
        store,
        "-q",
        "I am 60 and it is on my back",
        "-q",
        "What should I do?",
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("assistant:") == 2
    assert "report updated" in first.stderr
    listed = json.loads(dermfm("assistant", "cases", "--case-store", store, "--json").stdout)
    assert len(listed) == 1 and listed[0]["messages"] == 4 and listed[0]["reports"] == 2
    case_id = listed[0]["case_id"]
    resumed = dermfm("chat", "--case", case_id, "--case-store", store, "-q", "It itches.")
    assert resumed.returncode == 0, resumed.stderr
    listed = json.loads(dermfm("assistant", "cases", "--case-store", store, "--json").stdout)
    assert listed[0]["messages"] == 6
    docs = dermfm(
        "assistant",
        "documents",
        case_id,
        "-o",
        tmp_path / "docs",
        "--case-store",
        store,
        "--formats",
        "md",
    )
    assert docs.returncode == 0, docs.stderr
    assert (tmp_path / "docs" / "soap.md").read_text(encoding="utf-8").count("60") >= 1
    missing = dermfm("chat", "--case", "0123456789ab", "--case-store", store, "-q", "hi")
    assert missing.returncode == 2 and "no such case" in missing.stderr


def test_calibrate_stores_a_calibration_that_consult_then_uses(ham, tmp_path) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    with (data / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "split"])
        for i, (path, label) in enumerate(ham):
            shutil.copy(path, data / "images" / path.name)
            writer.writerow([f"images/{path.name}", HAM_NAMES[label], "val" if i % 2 else "test"])
    out = tmp_path / "calibration"
    result = dermfm(
        "assistant",
        "calibrate",
        "-d",
        "generic_csv:dermoscopy",
        "--root",
        data,
        "-o",
        out,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    stored = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    group = stored["groups"]["dermoscopy"]
    assert group["n_calibration"] == len(ham) // 2
    assert group["measured"]["n_test"] == len(ham) - len(ham) // 2
    again = dermfm(
        "assistant", "calibrate", "-d", "generic_csv:dermoscopy", "--root", data, "-o", out
    )
    assert again.returncode == 2 and "exists" in again.stderr
    used = dermfm("consult", ham[1][0], "--calibration", out, "--json")
    assert used.returncode == 0, used.stderr
    report = json.loads(used.stdout)[0]
    assert "generic_csv val" in report["differential"]["probability_kind"]
    assert report["differential"]["prediction_set"]["calibrated_on"] == group["calibrated_on"]
