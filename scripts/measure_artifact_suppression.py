"""Does switching off an SAE's artifact latents remove a shortcut? Measured on real biased splits.

For each experiment a binary task is made shortcut-prone: in the training images an artifact
is present on 90% of class A and 10% of class B. A classifier is trained on those images, then
tested on the same test images twice: *biased* (artifact on 90% of A / 10% of B, as in
training) and *clean* (no artifact). The gap (biased accuracy - clean accuracy, paired on the
same images) measures how much the classifier leans on the artifact. Then the same is done with
the SAE's artifact latents switched off (projected out of the embeddings for the linear probe,
zeroed in the SAE codes for the concept bottleneck) and the gap and clean accuracy are compared,
all with 95% cluster-bootstrap intervals (paired on the test images).

Experiments (../shared/data, test split for testing, train split for training):
* HAM10000 melanoma vs nevus, with a ruler, purple ink or hair drawn on
  (:func:`dermfm.interpret.synthetic.add_artifact`);
* DermNet NZ, its two largest conditions, with the real DermNet watermark corner (the photo as
  published) vs the same photo with the corner blanked.

The artifact latents are those stored with the SAE (``artifacts.json``: found by
``dermfm sae suppress`` on *validation* images, so no test image chose them). Writes
``docs/artifact_suppression.json``; prints a table.

    python scripts/measure_artifact_suppression.py [--sae FOLDER] [--n-train 700] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def balanced(records: list, labels: tuple[str, str], n: int, seed: int) -> list:
    """At most ``n`` records of each of the two labels (seeded), in input order."""
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in labels:
        idx = [i for i, r in enumerate(records) if r.label == label]
        keep |= set(rng.sample(idx, min(n, len(idx))))
    return [r for i, r in enumerate(records) if i in keep]


def render(split: dict[str, Any], i: int, real_watermark: bool) -> Any:
    """Image ``i`` of a shortcut split; DermNet's artifact is its own unmasked watermark."""
    from dermfm.interpret.synthetic import shortcut_image
    from dermfm.io import load_image

    if real_watermark and split["artifact"][i]:
        return load_image(split["records"][i].image)
    return shortcut_image(split, i)


def embed(model: Any, split: dict[str, Any], real_watermark: bool, clean: bool) -> torch.Tensor:
    """Embeddings of a split's images, with their assigned artifacts or all clean."""
    if clean:
        split = {**split, "artifact": np.zeros_like(np.asarray(split["artifact"]))}
    images = [render(split, i, real_watermark) for i in range(len(split["records"]))]
    found = model.embed_images(images, show_progress=True)
    if found.errors:
        raise SystemExit(f"unreadable images: {list(found.errors.values())[:3]}")
    return found.vectors


def gap_and_clean(
    y: np.ndarray, p_biased: np.ndarray, p_clean: np.ndarray, groups: list, n_boot: int
) -> dict[str, Any]:
    """Biased and clean accuracy on the same images and their paired difference."""
    from dermfm.evaluate import metrics

    def acc(t: np.ndarray, p: np.ndarray) -> float:
        return metrics.accuracy(t, p.argmax(axis=1))

    paired = metrics.paired_bootstrap(
        acc, y, p_clean, p_biased, groups=groups, n_boot=n_boot, name="biased - clean"
    )
    clean = metrics.bootstrap(acc, y, p_clean, groups=groups, n_boot=n_boot, name="clean")
    return {"biased": paired.value_b, "clean": clean.to_dict(), "gap": paired.difference.to_dict()}


def run_experiment(
    name: str,
    model: Any,
    sae: Any,
    suppressor: Any,
    train: dict[str, Any],
    test: dict[str, Any],
    real_watermark: bool,
    n_boot: int,
) -> dict[str, Any]:
    """Probe and bottleneck, without and with suppression, on one biased task."""
    from dermfm.evaluate import metrics
    from dermfm.evaluate.probe import LinearProbe
    from dermfm.interpret.artifacts import project_out
    from dermfm.interpret.bottleneck import ConceptBottleneck

    x_train = embed(model, train, real_watermark, clean=False)
    x_biased = embed(model, test, real_watermark, clean=False)
    x_clean = embed(model, test, real_watermark, clean=True)
    y_train, y_test = np.asarray(train["y"]), np.asarray(test["y"])
    groups = [r.key for r in test["records"]]
    out: dict[str, Any] = {
        "n_train": len(y_train),
        "n_test": len(y_test),
        "artifact_share_train": {
            str(c): float(np.mean(np.asarray(train["artifact"])[y_train == c])) for c in (0, 1)
        },
    }
    directions = torch.as_tensor(suppressor.directions, dtype=torch.float32)
    for label, transform in (
        ("probe", lambda x: x),
        ("probe_suppressed", lambda x: project_out(x, directions)),
    ):
        probe = LinearProbe(seed=0).fit(transform(x_train).numpy(), y_train)
        out[label] = gap_and_clean(
            y_test,
            probe.predict_proba(transform(x_biased).numpy()),
            probe.predict_proba(transform(x_clean).numpy()),
            groups,
            n_boot,
        )
    codes = {
        k: sae.encode(v) for k, v in (("train", x_train), ("biased", x_biased), ("clean", x_clean))
    }
    for label, zeroed in (("bottleneck", ()), ("bottleneck_suppressed", suppressor.latents)):
        cbm = ConceptBottleneck(seed=0, zero_latents=tuple(zeroed)).fit(codes["train"], y_train)
        out[label] = gap_and_clean(
            y_test,
            cbm.predict_proba(codes["biased"]),
            cbm.predict_proba(codes["clean"]),
            groups,
            n_boot,
        )
    for model_kind in ("probe", "bottleneck"):
        before, after = out[model_kind], out[f"{model_kind}_suppressed"]
        out[f"{model_kind}_gap_change"] = after["gap"]["value"] - before["gap"]["value"]
        out[f"{model_kind}_clean_change"] = after["clean"]["value"] - before["clean"]["value"]
    # the same comparison, paired on test images: clean accuracy with vs without suppression
    probe_plain = LinearProbe(seed=0).fit(x_train.numpy(), y_train)
    probe_supp = LinearProbe(seed=0).fit(project_out(x_train, directions).numpy(), y_train)
    out["probe_clean_paired"] = metrics.paired_bootstrap(
        lambda t, p: metrics.accuracy(t, p.argmax(axis=1)),
        y_test,
        probe_plain.predict_proba(x_clean.numpy()),
        probe_supp.predict_proba(project_out(x_clean, directions).numpy()),
        groups=groups,
        n_boot=n_boot,
        name="clean accuracy: suppressed - plain",
    ).to_dict()
    print(f"{name}: done")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sae", type=Path, default=None, help="SAE folder (default: shipped)")
    parser.add_argument("--n-train", type=int, default=700, help="training images per class")
    parser.add_argument("--n-test", type=int, default=250, help="test images per class")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "artifact_suppression.json")
    args = parser.parse_args()

    import dermfm
    from dermfm.data import read_dataset
    from dermfm.interpret import default_sae_folder, load_suppressor
    from dermfm.interpret.sae import load_sae
    from dermfm.interpret.synthetic import shortcut_split

    model = dermfm.load_model()
    folder = args.sae or default_sae_folder(model)
    if folder is None:
        raise SystemExit("no SAE: pass --sae FOLDER")
    sae = load_sae(folder)
    suppressor = load_suppressor(model, folder)
    results: dict[str, Any] = {
        "sae": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "suppressed_latents": dict(
            zip(map(str, suppressor.latents), suppressor.artifacts, strict=True)
        ),
        "experiments": {},
    }
    ham = read_dataset("ham10000", SHARED)
    pair = ("melanoma", "melanocytic_nevus")
    for kind in ("ruler", "ink", "hair"):
        train = shortcut_split(balanced(ham.splits["train"], pair, args.n_train, 0), pair, kind)
        test = shortcut_split(
            balanced(ham.splits["test"], pair, args.n_test, 1), pair, kind, seed=1
        )
        results["experiments"][f"ham10000_{kind}"] = run_experiment(
            f"HAM10000 {kind}", model, sae, suppressor, train, test, False, args.n_boot
        )
    dermnet = read_dataset("dermnet_nz", SHARED)
    top2 = tuple(
        label for label, _ in Counter(r.label for r in dermnet.splits["train"]).most_common(2)
    )
    train = shortcut_split(
        balanced(dermnet.splits["train"], top2, args.n_train, 0), top2, "watermark"
    )
    test = shortcut_split(
        balanced(dermnet.splits["test"], top2, args.n_test, 1), top2, "watermark", seed=1
    )
    results["experiments"]["dermnet_watermark"] = {
        "classes": list(top2),
        **run_experiment(
            "DermNet watermark", model, sae, suppressor, train, test, True, args.n_boot
        ),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def cell(e: dict[str, Any]) -> str:
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    print("| experiment | classifier | gap (biased - clean) | clean accuracy |")
    print("|---|---|---|---|")
    for name, found in results["experiments"].items():
        for clf in ("probe", "probe_suppressed", "bottleneck", "bottleneck_suppressed"):
            print(f"| {name} | {clf} | {cell(found[clf]['gap'])} | {cell(found[clf]['clean'])} |")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
