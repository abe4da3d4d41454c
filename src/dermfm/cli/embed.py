"""``dermfm embed``: embed a source of images into an embedding store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermfm.cli.common import (
    BatchOpt,
    CheckpointOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    err,
    fail,
    load_model_or_fail,
    out,
    print_json,
)


def embed_command(
    source: Annotated[
        str,
        typer.Argument(
            help="Folder of images, CSV/JSONL manifest, dataset spec (name or YAML, with "
            "--root) or WebDataset shards (.tar, {000..009} pattern, *-index.json, folder)."
        ),
    ],
    store: Annotated[Path, typer.Argument(help="Embedding store folder (created or resumed).")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    precision: PrecisionOpt = "fp32",
    engine: Annotated[
        str, typer.Option(help="local (threads + one batched model) or ray (a Ray cluster).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto or ray://host:port (default: start a local one)."),
    ] = None,
    actors: Annotated[int, typer.Option(min=1, help="Ray actors, each with its own model.")] = 1,
    num_cpus: Annotated[float, typer.Option(help="CPUs per Ray actor.")] = 1.0,
    num_gpus: Annotated[float, typer.Option(help="GPUs per Ray actor.")] = 0.0,
    root: Annotated[
        Path | None, typer.Option(help="Folder holding the dataset of a spec source.")
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per store shard.")] = 1000,
    batch_size: BatchOpt = 32,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads per model.")] = 4,
    json_out: JsonOpt = False,
) -> None:
    """Embed every image of a source into an embedding store (Parquet shards + manifest) that
    eval, sae train, adapt and index build read. Resumable: a re-run skips finished shards."""
    from dermfm.errors import DermfmError
    from dermfm.store import embed_source

    loaded = load_model_or_fail(model, checkpoint, precision)

    def shard_done(name: str, rows: int) -> None:
        if not json_out:
            err.print(f"{name}: {rows} images", highlight=False)

    try:
        report = embed_source(
            source,
            store,
            loaded,
            engine=engine,
            root=root,
            shard_size=shard_size,
            batch_size=batch_size,
            workers=workers,
            address=address,
            actors=actors,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            show_progress=not json_out,
            on_shard=shard_done,
        )
    except (DermfmError, ValueError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json(report.to_dict())
    else:
        out.print(
            f"{store}: wrote {report.written} shards ({report.images} images, "
            f"{report.images_per_s:.1f} images/s), {report.skipped} of {report.units} already "
            f"done; {len(report.errors)} images could not be embedded",
            highlight=False,
        )
    for path, reason in report.errors:
        err.print(f"[red]error:[/red] {path}: {reason}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if report.errors else 0)
