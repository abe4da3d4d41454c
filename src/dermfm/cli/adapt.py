"""``dermfm adapt``: fit an adapter on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dermfm.cli.common import (
    BatchOpt,
    CheckpointOpt,
    JsonOpt,
    ModelOpt,
    StoreOpt,
    TtaOpt,
    fail,
    load_model_or_fail,
    out,
    print_json,
)


def adapt_command(
    data: Annotated[
        str,
        typer.Argument(
            help="Labelled images: a dataset spec name or YAML (read under --root), a folder of "
            "class folders, a folder holding labels.csv, or a CSV file (file,label[,split])."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Adapter file to write (.safetensors).")
    ],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    root: Annotated[
        Path, typer.Option(help="Folder holding the dataset of a spec name or YAML.")
    ] = Path("../shared/data"),
    labels: Annotated[
        str | None,
        typer.Option("--labels", "-l", help="Label set (default: the dataset's own)."),
    ] = None,
    templates: Annotated[str, typer.Option(help="Prompt template set.")] = "skin8",
    train_split: Annotated[str, typer.Option(help="Split the adapter is fitted on.")] = "train",
    val_split: Annotated[
        str, typer.Option(help="Split that tunes and calibrates it (else held out of train).")
    ] = "val",
    test_split: Annotated[str, typer.Option(help="Split only reported on.")] = "test",
    cache_shots: Annotated[
        int, typer.Option(min=1, help="Training images per class in the image cache.")
    ] = 16,
    max_per_class: Annotated[
        int | None, typer.Option(min=1, help="Fit on at most this many images per class.")
    ] = None,
    tta: TtaOpt = False,
    batch_size: BatchOpt = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing adapter file.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fit an adapter on labelled images: a class-balanced linear probe and a Tip-Adapter image
    cache over the model's frozen embeddings, blended with zero-shot and calibrated on a
    validation split (docs/adapters.md). Use it with --adapter FILE."""
    from dermfm.adapters import adapter_splits, fit_adapter, metrics_rows, read_labelled
    from dermfm.errors import DermfmError

    if output.exists() and not overwrite:
        raise fail(f"{output} exists: pass --overwrite to replace it")
    loaded = load_model_or_fail(model, checkpoint)
    try:
        read = read_labelled(data, root)
        train, val, test, how = adapter_splits(read.splits, train_split, val_split, test_split)
        fitted = fit_adapter(
            loaded,
            train,
            val,
            labels or read.label_set,
            test,
            templates=templates,
            tta=tta,
            cache_shots=cache_shots,
            max_per_class=max_per_class,
            fitted_on=f"{read.name}: {how}",
            batch_size=batch_size,
            stores=store or (),
            show_progress=True,
        )
        fitted.save(output, overwrite=overwrite)
    except (DermfmError, ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json(fitted.to_dict())
        return
    table = Table(
        "split",
        "scores",
        "n",
        "accuracy",
        "balanced accuracy",
        "top-5",
        "macro AUROC",
        "log-loss",
        "ECE",
        title=f"{fitted.describe()}: {fitted.info.n_train} training images",
    )
    keys = ("accuracy", "balanced_accuracy", "top5_accuracy", "macro_auroc", "log_loss", "ece")
    for split, kind, n, found in metrics_rows(fitted):
        cells = [f"{found[k]:.3f}" if k in found else "" for k in keys]
        table.add_row(split, kind, str(n), *cells)
    out.print(table)
    out.print(
        f"Adapter written to {output}; use it with: dermfm diagnose IMAGE --adapter {output}",
        highlight=False,
    )
