"""Does a deeper text head help the bundled model? Measured on validation splits, image side fixed.

The bundled model's text tower (all-MiniLM-L6-v2) is frozen and a linear head maps its pooled
features into the joint space. This script trains text-side variants against *cached* image
embeddings of the training split (the image tower is fixed, so every step costs a few
milliseconds) with the recipe's MAKE loss and caption views, then compares the zero-shot
validation metrics the trainer reports (``diagnosis_report`` on each source's val split):

* ``shipped``: the model as it is;
* ``linear``: the linear head trained further the same way (the control: same data and steps);
* ``mlp``: the linear head plus a residual two-layer MLP (GELU, its output layer starting at
  zero, so training starts from the shipped head).

    .venv/bin/python scripts/text_side_experiment.py [--model PATH] [--steps 1000]

The figures in docs/model_card.md ("Text side") come from --train-images 4000 --steps 1000 on
the stage-3 weights (docs/text_side_experiment.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from dermfm import load_model
from dermfm.data import read_sources
from dermfm.data.captions import CaptionSynthesizer
from dermfm.evaluate.tasks import diagnosis_report, embed_records
from dermfm.models.bundled import DualEncoderModel
from dermfm.train.config import load_config
from dermfm.train.engine import LABEL_VIEWS, sampling_weights
from dermfm.train.losses import make_loss


class ResidualMLPHead(nn.Module):
    """``linear(x) + mlp(x)``; the MLP's output layer starts at zero."""

    def __init__(self, linear: nn.Linear, hidden: int) -> None:
        super().__init__()
        self.linear = linear
        self.mlp = nn.Sequential(
            nn.Linear(linear.in_features, hidden), nn.GELU(), nn.Linear(hidden, linear.out_features)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled model")
    parser.add_argument("--recipe", default="bundled")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--draws", type=int, default=8, help="caption draws per image")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("docs/text_side_experiment.json"))
    args = parser.parse_args()
    console = Console(stderr=True)
    torch.manual_seed(0)
    stage = load_config(args.recipe)
    recipe = stage
    views = tuple(stage.data.views)
    model = load_model(args.model)
    assert isinstance(model, DualEncoderModel)
    net = model.model.eval()
    records = read_sources(stage.data.root, stage.data.sources)
    train = [r for r in records if r.split == "train"]
    weights = sampling_weights(train, stage.data.balance, stage.data.source_weights)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), min(args.train_images, len(train)), replace=False, p=weights)
    train = [train[i] for i in sorted(picked)]
    console.print(f"embedding {len(train)} training images")
    split = embed_records(model, train, show_progress=True)
    images = F.normalize(split.vectors.float(), dim=-1)
    labels_seen = sorted({r.label for r in split.records if r.label})
    label_ids = torch.tensor([labels_seen.index(r.label) if r.label else -1 for r in split.records])
    synth = CaptionSynthesizer(views)
    texts = [
        [synth(r, random.Random(f"{i}:{k}")) for k in range(args.draws)]
        for i, r in enumerate(split.records)
    ]
    unique = sorted({t for row in texts for draw in row for t in draw if t})
    console.print(f"{len(unique)} unique captions: encoding with the frozen text tower")
    feats = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(unique), 512):
            feats.append(net.text(unique[i : i + 512]).float())
    features = torch.cat(feats)
    console.print(f"captions encoded in {time.perf_counter() - t0:.0f} s")
    where = {t: i for i, t in enumerate(unique)}
    index = torch.tensor(
        [[[where.get(t, 0) if t else 0 for t in draw] for draw in row] for row in texts]
    )
    valid = torch.tensor([[[bool(t) for t in draw] for draw in row] for row in texts])
    label_views = torch.tensor([v in LABEL_VIEWS for v in views])
    val = [r for r in records if r.split == "val"]
    val_splits = {
        source: embed_records(model, [r for r in val if r.source == source], show_progress=True)
        for source in recipe.validation.label_sets
    }

    shipped_head, shipped_scale = copy.deepcopy(net.text_proj), float(net.logit_scale)

    def validate(head: nn.Module, scale: float, name: str) -> dict[str, float]:
        """The trainer's zero-shot validation metrics with ``head`` in place of the text head
        (put back afterwards)."""
        net.text_proj = head
        net.logit_scale.data.fill_(scale)
        wrapped = DualEncoderModel(net, model.card, f"text-experiment:{name}", "cpu")
        wrapped.cacheable = False
        out: dict[str, float] = {}
        start = time.perf_counter()
        with torch.inference_mode():
            for source, label_set in recipe.validation.label_sets.items():
                report = diagnosis_report(wrapped, val_splits[source], label_set, n_boot=0)
                out |= {f"{source}/{k}": e.value for k, e in report.items()}
        net.text_proj = shipped_head
        net.logit_scale.data.fill_(shipped_scale)
        console.print(f"{name}: validated in {time.perf_counter() - start:.0f} s")
        return out

    def fit(head: nn.Module) -> tuple[nn.Module, float, float]:
        scale = nn.Parameter(torch.tensor(shipped_scale))
        params = [*head.parameters(), scale]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
        draw_rng = np.random.default_rng(1)
        p = sampling_weights(split.records, stage.data.balance, stage.data.source_weights)
        start = time.perf_counter()
        for _ in range(args.steps):
            rows = torch.from_numpy(draw_rng.choice(len(images), args.batch, p=p))
            k = torch.from_numpy(draw_rng.integers(0, args.draws, args.batch))
            idx, ok = index[rows, k], valid[rows, k]
            text = F.normalize(head(features[idx.flatten()]), dim=-1).reshape(*idx.shape, -1)
            loss = make_loss(images[rows], text, ok, scale, label_ids[rows], label_views)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds = time.perf_counter() - start
        console.print(f"trained {args.steps} steps in {seconds:.0f} s, loss {float(loss):.3f}")
        return head.eval(), float(scale.detach()), seconds

    results = {"shipped": validate(shipped_head, shipped_scale, "shipped")}
    linear, scale, secs = fit(copy.deepcopy(shipped_head).train())
    results["linear"] = validate(linear, scale, "linear") | {"train_seconds": secs}
    mlp, scale, secs = fit(ResidualMLPHead(copy.deepcopy(shipped_head), args.hidden).train())
    results["mlp"] = validate(mlp, scale, "mlp") | {"train_seconds": secs}
    keys = [k for k in results["shipped"] if k.endswith(("balanced_accuracy", "top5_accuracy"))]
    keys += [k for k in results["shipped"] if k.endswith("/accuracy")]
    lines = ["| metric | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{r[key]:.3f}" for r in results.values()) + " |")
    print("\n".join(lines))
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
