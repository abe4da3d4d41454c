"""Protocol fidelity: dermfm's zero-shot evaluation gives the same per-image predictions as
CLIP_benchmark's own pipeline (open_clip loading, webdataset reader, prompt-ensemble classifier)
on the same model and real images, with the published class names and the 8 skin templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermfm.data import export_clip_benchmark_wds, read_dataset
from dermfm.evaluate.tasks import embed_records
from dermfm.zeroshot import ZeroShotClassifier


def test_zero_shot_predictions_identical_to_clip_benchmark(
    tmp_path: Path, shared_data: Path, tiny_open_clip: Path, oc_model
) -> None:
    pytest.importorskip("clip_benchmark", reason="clip_benchmark not installed (dev extra)")
    import open_clip
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc

    test = [r for r in read_dataset("ham10000", shared_data).records if r.split == "test"]
    records = test[:: len(test) // 48][:48]
    export_clip_benchmark_wds(records, tmp_path / "wds", label_set="ham7", templates="skin8")

    # CLIP_benchmark's side: plain open_clip loading of the folder, its own reader and classifier
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_open_clip}")
    dataset = build_dataset("wds/ham", root=str(tmp_path / "wds"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset.batched(16), batch_size=None)
    classifier = zsc.zero_shot_classifier(
        model, tokenizer, dataset.classes, dataset.templates, "cpu", amp=False
    )
    logits, target = zsc.run_classification(model, classifier, loader, "cpu", amp=False)

    # dermfm's side: the harness's embedding and zero-shot classifier
    split = embed_records(oc_model, records, batch_size=16, cache=False)
    classifier_ours = ZeroShotClassifier(oc_model, labels="ham7", templates="skin8")
    cosines = classifier_ours.logits(split.vectors) * classifier_ours.temperature
    names = dataset.classes
    assert names == classifier_ours.label_set.names
    assert [r.metadata["class_name"] for r in split.records] == [names[i] for i in target]
    assert cosines.argmax(1).tolist() == logits.argmax(1).tolist()
    # the same scores: CLIP_benchmark's logits are 100 x the cosine similarities
    torch.testing.assert_close(cosines * 100, logits, rtol=1e-4, atol=1e-4)
