"""``dermfm index build|add|search``: a persistent retrieval index over a case library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

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

index_app = typer.Typer(help="Build, extend and search a retrieval index.", no_args_is_help=True)


@index_app.command("build")
def index_build(
    index: Annotated[Path, typer.Argument(help="Folder to create the index in.")],
    source: Annotated[
        Path | None,
        typer.Argument(
            help="Folder of images, or a CSV with a path column "
            "and optional label and caption columns (not with --from-store)."
        ),
    ] = None,
    from_store: Annotated[
        Path | None,
        typer.Option(help="Index an embedding store (dermfm embed) instead of image files."),
    ] = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    precision: PrecisionOpt = "fp32",
    kind: Annotated[
        str,
        typer.Option(
            help="flat (exact), ivf or hnsw; with --from-store: auto (default), flat, ivf "
            "(inverted file), hnsw or ivfpq (IVF-PQ with OPQ)."
        ),
    ] = "",
    memory: Annotated[
        str | None,
        typer.Option(help="With --from-store: memory budget (e.g. 2GB) that chooses the index."),
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option(help="With --from-store: a FAISS index-factory string instead of --kind."),
    ] = None,
    shards: Annotated[
        int,
        typer.Option(
            help="With --from-store: split the index into this many parts over consecutive "
            "rows, built one at a time and searched in parallel as one index."
        ),
    ] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    batch_size: BatchOpt = 32,
    json_out: JsonOpt = False,
) -> None:
    """Build a persistent retrieval index over a case library (image files or a store)."""
    from dermfm.errors import DermfmError
    from dermfm.retrieval import Index

    if (source is None) == (from_store is None):
        raise fail("give a SOURCE of images or --from-store STORE (one of them)")
    if from_store is not None:
        _index_from_store(index, from_store, model, checkpoint, kind, memory, factory, shards,
                          overwrite,
                          json_out)  # fmt: skip
        return
    if memory or factory:
        raise fail("--memory and --factory choose the index of a store: use --from-store")
    loaded = load_model_or_fail(model, checkpoint, precision)
    try:
        built, report = Index.build(
            index,
            source,  # type: ignore[arg-type]
            loaded,
            kind=kind or "flat",
            overwrite=overwrite,
            batch_size=batch_size,
            show_progress=True,
        )
    except DermfmError as exc:
        raise fail(str(exc)) from None
    _print_add(report, len(built), json_out)


def _index_from_store(
    index: Path,
    store: Path,
    model: str | None,
    checkpoint: Path | None,
    kind: str,
    memory: str | None,
    factory: str | None,
    shards: int,
    overwrite: bool,
    json_out: bool,
) -> None:
    from dermfm.ann import parse_memory
    from dermfm.errors import DermfmError
    from dermfm.retrieval import Index

    try:
        budget = parse_memory(memory) if memory else None
        built, report = Index.from_store(
            index,
            store,
            load_model_or_fail(model, checkpoint) if model or checkpoint else None,
            kind=kind or "auto",
            memory=budget,
            factory=factory,
            shards=shards,
            overwrite=overwrite,
        )
    except (DermfmError, ValueError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json({**report.to_dict(), "total": len(built)})
        return
    tuned = f", {report.parameter}={report.value}" if report.parameter else ""
    if report.shards > 1:
        tuned += f"; {report.shards} parts searched together, {report.parameter} at most"
    out.print(
        f"{index}: {report.factory} over {report.vectors} vectors ({built.meta['reason']}"
        f"{tuned}); recall@10 vs exact search on {report.queries} held-aside queries: "
        f"{report.recall_at_10:.3f}; built in {report.seconds:.1f} s, "
        f"{report.index_bytes / 1e6:.1f} MB on disk",
        highlight=False,
    )


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Argument(help="An existing index folder.")],
    source: Annotated[Path, typer.Argument(help="Folder of images, a CSV, or one image.")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    batch_size: BatchOpt = 32,
    json_out: JsonOpt = False,
) -> None:
    """Add images to an index (files already indexed are skipped)."""
    from dermfm.errors import DermfmError
    from dermfm.retrieval import Index

    try:
        opened = Index.open(
            index, load_model_or_fail(model, checkpoint) if model or checkpoint else None
        )
        report = opened.add(source, batch_size=batch_size, show_progress=True)
    except DermfmError as exc:
        raise fail(str(exc)) from None
    _print_add(report, len(opened), json_out)


def _print_add(report: Any, total: int, json_out: bool) -> None:
    if json_out:
        print_json({**report.to_dict(), "total": total})
    else:
        out.print(
            f"added {report.added}, already indexed {len(report.duplicates)}, "
            f"failed {len(report.errors)}; the index now holds {total} images"
        )
    for e in report.errors:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if report.errors else 0)


@index_app.command("search")
def index_search(
    index: Annotated[Path, typer.Argument(help="An existing index folder.")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text query.")] = None,
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Query image.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Results to return.")] = 10,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search an index by text or by image."""
    from dermfm.errors import DermfmError
    from dermfm.retrieval import Index

    if (text is None) == (image is None):
        raise fail("give exactly one of --text or --image")
    try:
        opened = Index.open(
            index, load_model_or_fail(model, checkpoint) if model or checkpoint else None
        )
        hits = opened.search_text(text, k) if text is not None else opened.search_image(image, k)
    except DermfmError as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json([h.to_dict() for h in hits])
        return
    table = Table(title=f"{index}: {text!r}" if text else f"{index}: {image}", title_justify="left")
    for col in ("rank", "score", "label", "path", "caption"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.label or "", h.path, h.caption or "")
    out.print(table)
