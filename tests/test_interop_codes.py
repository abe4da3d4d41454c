"""Coded diagnoses (issue 16, part 2): every ontology condition carries its ICD-10-CM code as
data, each one a real code of the maintained ``simple-icd-10-cm`` package, consistent with the
condition's malignancy; results, reports and documents show the code beside the name."""

from __future__ import annotations

from pathlib import Path

import pytest
import simple_icd_10_cm as cm
import torch

from dermfm.knowledge import load_label_set, load_ontology
from dermfm.knowledge.files import read_document

ONTOLOGY_FILE = Path(load_ontology().sources[0])


def test_every_condition_states_its_code_and_each_code_is_real() -> None:
    entries = read_document(ONTOLOGY_FILE)["nodes"]
    conditions = [e for e in entries if e.get("kind", "condition") == "condition"]
    unstated = [e["id"] for e in conditions if "icd10cm" not in e]
    assert not unstated, f"conditions without an icd10cm entry: {unstated}"
    coded = [e for e in entries if e.get("icd10cm")]
    invalid = [(e["id"], e["icd10cm"]) for e in coded if not cm.is_valid_item(e["icd10cm"])]
    assert not invalid, f"not ICD-10-CM codes: {invalid}"
    # deliberate gaps are few and explicit (null), never forgotten
    assert len([e for e in conditions if e["icd10cm"] is None]) <= 3
    assert len(coded) >= 280


#: Codes that differ from the malignancy on purpose, with why.
INDEXED_ELSEWHERE = {"keratoacanthoma": "ICD-10-CM indexes it to L85.8 (epidermal thickening)"}


def test_codes_agree_with_the_malignancy_of_the_condition() -> None:
    """A malignant condition's code is a neoplasm (C00-D49); a benign one is never a malignant
    neoplasm (C00-C96). Catches a code pasted on the wrong line."""
    ontology = load_ontology()
    for node in ontology:
        code = node.icd10cm
        if code is None or node.kind != "condition" or node.id in INDEXED_ELSEWHERE:
            continue
        chapter = code[0]
        if node.malignancy == "malignant":
            assert chapter == "C" or code.startswith(("D0", "D4")), (node.id, code)
        if node.malignancy == "benign":
            assert chapter != "C", (node.id, code)


def test_every_label_set_class_that_names_a_code_shows_it(oc_model) -> None:
    """Predictions (CLI --json, REST /api/diagnose) carry the code of their ontology node."""
    from dermfm.zeroshot import ZeroShotClassifier

    clf = ZeroShotClassifier(oc_model, "ham7", adapter=False)
    probs = torch.softmax(torch.arange(len(clf.label_set), dtype=torch.float32), 0)
    result = clf.summarise("x.jpg", probs, top_k=7)
    ontology = load_ontology()
    assert all(p.icd10cm == ontology[p.node].icd10cm for p in result.predictions)
    by_label = {p.label: p.icd10cm for p in result.predictions}
    assert by_label["mel"] == "C43.9" and by_label["bcc"] == "C44.91"
    assert result.to_dict()["predictions"][0]["icd10cm"] is not None
    # the assistant's label set: every class maps to a coded node
    assistant = load_label_set("assistant", ontology)
    uncoded = [c.label for c in assistant.classes if c.node and not ontology[c.node].icd10cm]
    assert not uncoded


def test_documents_show_the_code_beside_the_name(sample_report) -> None:
    from dermfm.assistant.documents import referral_letter, report_markdown

    ontology = load_ontology()
    d = sample_report.differential
    candidates = [c.model_copy(update={"icd10cm": ontology[c.node].icd10cm}) for c in d.candidates]
    ps = d.prediction_set.model_copy(update={"codes": ["C43.9", "D22.9"]})
    report = sample_report.model_copy(
        update={
            "differential": d.model_copy(update={"candidates": candidates, "prediction_set": ps})
        }
    )
    text = report_markdown(report)
    assert "| 1 | melanoma | C43.9 |" in text
    assert "melanoma (ICD-10-CM C43.9), melanocytic nevus (ICD-10-CM D22.9)" in text
    assert "C43.9" in referral_letter(report)


def test_a_code_that_is_no_code_is_refused(tmp_path: Path) -> None:
    from dermfm.errors import KnowledgeError
    from dermfm.knowledge.ontology import Ontology

    bad = tmp_path / "o.yaml"
    bad.write_text(
        "nodes:\n  - id: root\n    name: root\n    kind: category\n    parent: null\n"
        "  - id: x\n    name: x\n    parent: root\n    malignancy: benign\n    urgency: routine\n"
        "    icd10cm: melanoma\n"
    )
    with pytest.raises(KnowledgeError, match="not an ICD-10-CM code"):
        Ontology.from_files([bad])
