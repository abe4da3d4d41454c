"""``dermfm data prepare|export-wds|pack``: manifests, CLIP_benchmark webdatasets and
WebDataset shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dermfm.cli.common import err, fail, out

data_app = typer.Typer(
    help="Prepare training data: manifests and WebDataset shards.", no_args_is_help=True
)


@data_app.command("prepare")
def data_prepare(
    output: Annotated[Path, typer.Argument(help="Manifest file to write (.jsonl).")],
    root: Annotated[Path, typer.Option(help="Folder holding the source folders.")] = Path(
        "../shared/data"
    ),
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="Dataset spec name or YAML file to include (repeatable; default: the "
            "training sources HAM10000, Derm7pt, DermNet NZ)."
        ),
    ] = None,
) -> None:
    """Write a manifest of labelled datasets (any dataset spec) with their splits."""
    from collections import Counter

    from dermfm.data import read_sources, write_manifest
    from dermfm.errors import DermfmError

    try:
        records = read_sources(root, source)
        write_manifest(records, output)
    except DermfmError as exc:
        raise fail(str(exc)) from None
    table = Table("source", "split", "records")
    for (src, split), n in sorted(Counter((r.source, r.split) for r in records).items()):
        table.add_row(src, split, str(n))
    out.print(table)
    out.print(f"{len(records)} records written to {output}", highlight=False)


@data_app.command("export-wds")
def data_export_wds(
    dataset: Annotated[str, typer.Argument(help="Dataset spec name or YAML file.")],
    output: Annotated[Path, typer.Argument(help="CLIP_benchmark dataset folder to write.")],
    root: Annotated[Path, typer.Option(help="Folder holding the dataset.")] = Path(
        "../shared/data"
    ),
    split: Annotated[
        list[str] | None, typer.Option(help="Only this split (repeatable; default: all).")
    ] = None,
    templates: Annotated[str, typer.Option(help="Prompt template set written.")] = "skin8",
    overwrite: Annotated[bool, typer.Option(help="Replace existing shards.")] = False,
) -> None:
    """Export a dataset in CLIP_benchmark's webdataset layout (clip_benchmark eval --dataset
    wds/NAME --dataset_root OUTPUT)."""
    from dermfm.data import export_clip_benchmark_wds, read_dataset
    from dermfm.errors import DermfmError

    try:
        read = read_dataset(dataset, root)
        records = [r for r in read.records if not split or r.split in split]
        report = export_clip_benchmark_wds(
            records,
            output,
            label_set=read.label_set,
            templates=templates,
            overwrite=overwrite,
            show_progress=True,
        )
    except DermfmError as exc:
        raise fail(str(exc)) from None
    for error in report.errors:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    written = ", ".join(f"{k}: {v}" for k, v in report.samples.items())
    out.print(f"{read.report.summary()}\nWritten to {output}: {written}", highlight=False)
    raise typer.Exit(1 if report.errors else 0)


@data_app.command("pack")
def data_pack(
    manifest: Annotated[Path, typer.Argument(help="A CSV or JSONL manifest.")],
    output: Annotated[Path, typer.Argument(help="Folder to write the tar shards into.")],
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per shard.")] = 1000,
    max_side: Annotated[
        int | None, typer.Option(help="Re-encode images so their longer side is at most this.")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="Only records of this split (repeatable).")
    ] = None,
) -> None:
    """Convert a manifest to WebDataset tar shards (training streams either)."""
    from dermfm.data import read_manifest
    from dermfm.data.shards import pack_shards
    from dermfm.errors import DermfmError

    try:
        records = read_manifest(manifest, split)
        report = pack_shards(records, output, shard_size=shard_size, max_side=max_side)
    except DermfmError as exc:
        raise fail(str(exc)) from None
    for error in report.errors:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    out.print(
        f"{report.samples} samples in {len(report.shards)} shards under {output}", highlight=False
    )
    raise typer.Exit(1 if report.errors else 0)
