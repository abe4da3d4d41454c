"""Build the skin reference that dermfm's assistant uses to refuse photos that are not of skin.

Reference: ``--per-dataset`` random training-split photos of each dataset in ../shared/data
(HAM10000 and Derm7pt dermoscopy; DermNet NZ, Fitzpatrick17k and SD-198 clinical photos;
PAD-UFES-20 smartphone photos). Threshold: the ``--percentile`` of the scores of validation-split
photos. Measured and stored with it: the share of test-split skin photos that pass (overall and
per dataset), and the share of non-skin photos (scikit-image's sample photos: objects, animals,
people, text, astronomy) that are refused. Writes
``src/dermfm/assistant/skin_reference.safetensors``; prints the figures.

    python scripts/build_skin_reference.py [--root ../shared/data] [--per-dataset 400]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dermfm.assistant.quality import SKIN_REFERENCE_FILE, SkinReference
from dermfm.data import read_dataset
from dermfm.io import load_image

DATASETS = ("ham10000", "derm7pt", "dermnet_nz", "fitzpatrick17k_21", "pad_ufes20", "sd198_27")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--per-dataset", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=300, help="validation photos per dataset")
    parser.add_argument("--test", type=int, default=300, help="test photos per dataset")
    parser.add_argument("--percentile", type=float, default=0.5)
    parser.add_argument("--out", default=str(SKIN_REFERENCE_FILE))
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    def sample(records: list, n: int) -> list:
        chosen = rng.choice(len(records), size=min(n, len(records)), replace=False)
        return [load_image(records[i].image) for i in sorted(chosen)]

    references, held_out, test = [], [], {}
    for name in DATASETS:
        splits = read_dataset(name, args.root).splits
        references += sample(splits["train"], args.per_dataset)
        if splits.get("val"):
            held_out += sample(splits["val"], args.held_out)
        test[name] = sample(splits["test"], args.test)
    info = {
        "sources": [f"{n} (train split)" for n in DATASETS],
        "n_reference": len(references),
        "n_held_out": len(held_out),
        "features": "EfficientNet-Lite0 ImageNet, global average pool, L2-normalised",
    }
    reference = SkinReference.build(references, held_out, percentile=args.percentile, info=info)
    passed = {
        name: (reference.scores(reference.embed(images)) >= reference.threshold).float()
        for name, images in test.items()
    }
    reference.info["test_skin_pass_rate"] = float(torch.cat(list(passed.values())).mean())
    reference.info["test_skin_pass_rate_per_dataset"] = {
        name: round(float(p.mean()), 4) for name, p in passed.items()
    }
    reference.info["n_test"] = sum(len(images) for images in test.values())
    try:
        import skimage

        photos = sorted((Path(skimage.__file__).parent / "data").glob("*.[pj][np]g"))
        others = [load_image(p) for p in photos]
        scores = reference.scores(reference.embed(others))
        refused = {
            p.name: bool(s < reference.threshold) for p, s in zip(photos, scores, strict=True)
        }
        reference.info["non_skin_refused_rate"] = float(np.mean(list(refused.values())))
        reference.info["non_skin_refused"] = refused
    except ImportError:
        pass
    reference.save(args.out)
    print(json.dumps({"threshold": reference.threshold, **reference.info}, indent=2))


if __name__ == "__main__":
    main()
