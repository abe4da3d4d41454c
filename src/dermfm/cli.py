"""The ``dermfm`` command line: a thin layer over the public API (``dermfm.*``).

Exit status: 0 all inputs processed, 1 some inputs failed (each named on stderr), 2 the command
could not run (bad option, model or index not available).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Dermatology vision-language models: zero-shot differential diagnosis, clinical concept "
    "annotation and image retrieval. Decision support for clinicians, not a diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Build, extend and search a retrieval index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
data_app = typer.Typer(
    help="Prepare training data: manifests and WebDataset shards.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
sae_app = typer.Typer(
    help="Sparse autoencoders on image embeddings: train, name latents, browse them, explain "
    "images and classifiers, find and suppress artifact latents.",
    no_args_is_help=True,
)
app.add_typer(sae_app, name="sae")

out = Console()
err = Console(stderr=True)
DISCLAIMER = (
    "Decision support only, not a diagnosis. Scores are uncalibrated model outputs; "
    "a clinician must interpret them."
)
ADAPTER_DISCLAIMER = (
    "Decision support only, not a diagnosis. Probabilities come from an adapter, calibrated "
    "on its validation images; a clinician must interpret them."
)

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Registry name, hf-hub: id, or local model folder "
        "(default: the bundled model). See `dermfm models`.",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Weights for an open_clip architecture given as --model."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 (exact) or bf16 (about 2x faster on CPUs with bf16 "
        "units; scores within about 1e-2).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ImagesArg = Annotated[list[Path], typer.Argument(help="Image files or folders of images.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model batch.")]
AdapterOpt = Annotated[
    Path | None,
    typer.Option(
        "--adapter",
        help="Adapter file (`dermfm adapt`). Default: the adapter the model ships for the "
        "label set, if any (docs/adapters.md).",
    ),
]
NoAdapterOpt = Annotated[
    bool,
    typer.Option("--no-adapter", help="Zero-shot scores, even where the model ships an adapter."),
]
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average the embeddings of 8 flipped and rotated views "
        "of each image (8x the compute).",
    ),
]
FastDecodeOpt = Annotated[
    bool,
    typer.Option(
        "--fast-decode",
        help="Decode camera-size JPEGs at a reduced scale (several times faster; scores differ "
        "slightly from the default full-resolution decode, docs/benchmarks.md).",
    ),
]

StoreOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--store",
        help="Embedding store (dermfm embed) of the model to read embeddings from instead of "
        "embedding the images again (repeatable).",
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _load(model: str | None, checkpoint: Path | None, precision: str = "fp32") -> Any:
    from dermfm.errors import DermfmError
    from dermfm.models import load_model

    try:
        return load_model(model, checkpoint=checkpoint, precision=precision)
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _adapter(adapter: Path | None, no_adapter: bool) -> Any:
    """The ``adapter=`` value that ``--adapter`` / ``--no-adapter`` ask for: the loaded file,
    ``False``, or ``True`` (the model's shipped adapter for the label set, if any)."""
    from dermfm.adapters import load_adapter
    from dermfm.errors import DermfmError

    if adapter is not None and no_adapter:
        raise _fail("give --adapter or --no-adapter, not both")
    if adapter is None:
        return not no_adapter
    try:
        return load_adapter(adapter)
    except DermfmError as exc:
        raise _fail(str(exc)) from None


def _inputs(images: list[Path]) -> list[Path]:
    from dermfm.errors import ImageError
    from dermfm.io import expand_inputs

    try:
        found = expand_inputs(images)
    except ImageError as exc:
        raise _fail(str(exc)) from None
    if not found:
        raise _fail("no images found in " + ", ".join(map(str, images)))
    return found


def _report_failures(results: list[Any]) -> int:
    failed = [r for r in results if r.error]
    for r in failed:
        err.print(f"[red]error:[/red] {r.source}: {r.error}", highlight=False, soft_wrap=True)
    if failed:
        err.print(f"{len(failed)} of {len(results)} inputs failed.", highlight=False)
    return 1 if failed else 0


def _key_values(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` options as a mapping (values read as YAML: numbers, lists...)."""
    import yaml

    found: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: expected key=value")
        found[key.strip()] = yaml.safe_load(value)
    return found


def _print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


@app.command()
def models(json_out: JsonOpt = False) -> None:
    """List the registered models and where each would load from."""
    from dermfm.models import list_models

    rows = list_models()
    if json_out:
        _print_json([r.to_dict() for r in rows])
        return
    table = Table(title="dermfm models", show_lines=True)
    for col in ("name", "backend", "published id", "licence", "loads from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.name + (" (default)" if r.default else ""), r.backend, r.id, r.licence, r.location
        )
    out.print(table)


@app.command()
def diagnose(
    images: ImagesArg,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    precision: PrecisionOpt = "fp32",
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            "-l",
            help="Label set: ham7, pad6, derm7pt, f17k114, dermnet, all; a file "
            "(YAML/JSON or one name per line); or comma-separated names. Default: all, or "
            "the --adapter's label set.",
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show.")] = 5,
    templates: Annotated[str, typer.Option(help="Prompt template set.")] = "skin8",
    temperature: Annotated[
        float | None,
        typer.Option(help="Softmax temperature (default: the model's own logit scale)."),
    ] = None,
    batch_size: BatchOpt = 32,
    suppress_artifacts: Annotated[
        bool,
        typer.Option(
            "--suppress-artifacts",
            help="Project image embeddings off the artifact directions (ruler, ink, hair, "
            "dermoscope border, gel, watermark) of the model's sparse autoencoder.",
        ),
    ] = False,
    sae: Annotated[
        Path | None,
        typer.Option(help="SAE folder for --suppress-artifacts (default: the model's own)."),
    ] = None,
    adapter: AdapterOpt = None,
    no_adapter: NoAdapterOpt = False,
    tta: TtaOpt = False,
    fast_decode: FastDecodeOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Differential diagnosis of skin images (zero-shot, or an adapter's calibrated
    probabilities), with ontology roll-up."""
    from dermfm.errors import DermfmError
    from dermfm.zeroshot import ZeroShotClassifier

    paths = _inputs(images)
    loaded = _load(model, checkpoint, precision)
    chosen = _adapter(adapter, no_adapter)
    if labels is None:
        labels = chosen.label_set if adapter is not None else "all"
    try:
        suppressor = None
        if suppress_artifacts or sae is not None:
            from dermfm.interpret import load_suppressor

            suppressor = load_suppressor(loaded, sae)
        clf = ZeroShotClassifier(
            loaded, labels, templates, temperature, suppressor=suppressor, adapter=chosen
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    results = clf.diagnose(
        paths,
        top_k=top_k,
        batch_size=batch_size,
        show_progress=len(paths) > 1,
        tta=tta,
        fast_decode=fast_decode,
    )
    if json_out:
        _print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.ok:
                _print_diagnosis(r)
        out.print(f"[dim]{ADAPTER_DISCLAIMER if clf.adapter else DISCLAIMER}[/dim]")
    raise typer.Exit(_report_failures(results))


def _print_diagnosis(r: Any) -> None:
    table = Table(
        title=f"{r.source}  [dim]({r.model}, label set {r.label_set})[/dim]", title_justify="left"
    )
    table.add_column("#", justify="right")
    table.add_column("condition")
    table.add_column("ICD-10-CM")
    table.add_column("label")
    table.add_column(
        f"probability ({r.score_kind})" if r.adapter else "score (uncalibrated)", justify="right"
    )
    for i, p in enumerate(r.predictions, start=1):
        table.add_row(str(i), p.name, p.icd10cm or "", p.label, f"{p.probability:.3f}")
    out.print(table)
    if r.malignancy:
        summary = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in r.malignancy.items())
        out.print(f"  malignancy roll-up: {summary}")
    if r.urgency:
        out.print("  urgency roll-up: " + ", ".join(f"{k} {v:.2f}" for k, v in r.urgency.items()))
    out.print(f"  uncertainty: normalised entropy {r.entropy:.2f}, top-1 margin {r.margin:.2f}")
    if r.suppressed:
        out.print("  artifact directions removed before scoring: " + ", ".join(r.suppressed))
    if r.adapter:
        out.print(f"  adapter: {r.adapter}", highlight=False)
    if r.tta:
        out.print("  test-time augmentation: embedding averaged over 8 flipped/rotated views")
    if r.fast_decode:
        out.print("  fast decode: JPEG decoded at a reduced scale (not the reference decode)")


@app.command()
def concepts(
    images: ImagesArg,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    precision: PrecisionOpt = "fp32",
    select: Annotated[
        str | None,
        typer.Option(
            "--concepts",
            "-c",
            help="Concept ids and/or groups (skincon, derm7pt, artifact...), "
            "comma-separated, or a vocabulary file. Default: all.",
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Score at or above which a concept is reported present.")
    ] = 0.5,
    top: Annotated[int, typer.Option(help="Concepts to show per image in tables.")] = 10,
    batch_size: BatchOpt = 32,
    json_out: JsonOpt = False,
) -> None:
    """Score clinical concepts (MONET protocol) on skin images."""
    from dermfm.concepts import ConceptAnnotator

    paths = _inputs(images)
    loaded = _load(model, checkpoint, precision)
    try:
        annotator = ConceptAnnotator(loaded, select, threshold=threshold)
    except (KeyError, ValueError) as exc:
        raise _fail(str(exc).strip("'\"")) from None
    results = annotator.annotate(paths, batch_size=batch_size, show_progress=len(paths) > 1)
    if json_out:
        _print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if not r.ok:
                continue
            table = Table(title=f"{r.source}  [dim]({r.model})[/dim]", title_justify="left")
            for col in ("concept", "group", "score (raw)", "present"):
                table.add_column(col)
            for s in sorted(r.scores, key=lambda s: -s.score)[:top]:
                table.add_row(s.name, s.group, f"{s.score:.3f}", "yes" if s.present else "")
            out.print(table)
        out.print(f"[dim]{DISCLAIMER}[/dim]")
    raise typer.Exit(_report_failures(results))


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
            help="flat (exact), ivf or hnsw; with --from-store: auto (default), flat, hnsw or "
            "ivfpq (IVF-PQ with OPQ)."
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing index.")] = False,
    batch_size: BatchOpt = 32,
    json_out: JsonOpt = False,
) -> None:
    """Build a persistent retrieval index over a case library (image files or a store)."""
    from dermfm.errors import DermfmError
    from dermfm.retrieval import Index

    if (source is None) == (from_store is None):
        raise _fail("give a SOURCE of images or --from-store STORE (one of them)")
    if from_store is not None:
        _index_from_store(index, from_store, model, checkpoint, kind, memory, factory, overwrite,
                          json_out)  # fmt: skip
        return
    if memory or factory:
        raise _fail("--memory and --factory choose the index of a store: use --from-store")
    loaded = _load(model, checkpoint, precision)
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
        raise _fail(str(exc)) from None
    _print_add(report, len(built), json_out)


def _index_from_store(
    index: Path,
    store: Path,
    model: str | None,
    checkpoint: Path | None,
    kind: str,
    memory: str | None,
    factory: str | None,
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
            _load(model, checkpoint) if model or checkpoint else None,
            kind=kind or "auto",
            memory=budget,
            factory=factory,
            overwrite=overwrite,
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if json_out:
        _print_json({**report.to_dict(), "total": len(built)})
        return
    tuned = f", {report.parameter}={report.value}" if report.parameter else ""
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
        opened = Index.open(index, _load(model, checkpoint) if model or checkpoint else None)
        report = opened.add(source, batch_size=batch_size, show_progress=True)
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    _print_add(report, len(opened), json_out)


def _print_add(report: Any, total: int, json_out: bool) -> None:
    if json_out:
        _print_json({**report.to_dict(), "total": total})
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
        raise _fail("give exactly one of --text or --image")
    try:
        opened = Index.open(index, _load(model, checkpoint) if model or checkpoint else None)
        hits = opened.search_text(text, k) if text is not None else opened.search_image(image, k)
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        _print_json([h.to_dict() for h in hits])
        return
    table = Table(title=f"{index}: {text!r}" if text else f"{index}: {image}", title_justify="left")
    for col in ("rank", "score", "label", "path", "caption"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.label or "", h.path, h.caption or "")
    out.print(table)


@app.command("train")
def train_command(
    recipe: Annotated[str, typer.Argument(help="Packaged recipe name (bundled) or a YAML file.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """Train or fine-tune a model (one process; for DDP use torchrun -m dermfm.train)."""
    from dermfm.errors import DermfmError
    from dermfm.train import train_recipe

    try:
        folder = train_recipe(recipe, overrides or [])
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    out.print(f"Model written to {folder} (load it with --model {folder}).", highlight=False)


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
        raise _fail(str(exc)) from None
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
        raise _fail(str(exc)) from None
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
        raise _fail(str(exc)) from None
    for error in report.errors:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    out.print(
        f"{report.samples} samples in {len(report.shards)} shards under {output}", highlight=False
    )
    raise typer.Exit(1 if report.errors else 0)


@app.command("embed")
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

    loaded = _load(model, checkpoint, precision)

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
        raise _fail(str(exc)) from None
    if json_out:
        _print_json(report.to_dict())
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


@app.command("eval")
def eval_command(
    run_file: Annotated[
        Path | None, typer.Argument(help="Run file (YAML): models x datasets x tasks.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model to evaluate (repeatable; default: bundled)."),
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", "-d", help="Dataset spec name or YAML file (repeatable)."),
    ] = None,
    root: Annotated[Path, typer.Option(help="Folder holding the dataset(s).")] = Path(
        "../shared/data"
    ),
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            "-t",
            help="Task to run (repeatable; default: zeroshot, calibration, fairness, concepts).",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for results and report.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--set", help="Run option key=value, e.g. n_boot=200 (repeatable)."),
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="Evaluate at most this many images per dataset.")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            help="Adapter file, or 'shipped' for the model's own (repeatable): each dataset is "
            "scored with the one fitted for its label set, the others stay zero-shot.",
        ),
    ] = None,
    tta: TtaOpt = False,
    store: StoreOpt = None,
) -> None:
    """Benchmark models on datasets: metrics with 95% bootstrap intervals, calibration,
    subgroups, concepts, retrieval, probes and a leakage audit; writes JSON + Markdown/HTML."""
    from dataclasses import replace

    from dermfm.errors import DermfmError
    from dermfm.evaluate.config import (
        load_run_config,
        parse_options,
        parse_tasks,
        run_config_from_dict,
    )
    from dermfm.evaluate.runner import run_benchmark

    overrides = _key_values(option)
    if adapter:
        overrides["adapters"] = [a if a == "shipped" else str(Path(a).resolve()) for a in adapter]
    if tta:
        overrides["tta"] = True
    if store:
        overrides["stores"] = [str(p.resolve()) for p in store]
    try:
        if run_file is not None:
            if dataset:
                raise _fail("give either a run file or --dataset, not both")
            config = load_run_config(run_file)
            chosen = parse_tasks(task) if task else config.tasks
            config = replace(
                config,
                models=tuple(model) if model else config.models,
                datasets=tuple(
                    replace(
                        d,
                        max_images=max_images or d.max_images,
                        tasks=tuple(t for t in d.tasks if t in chosen) if d.tasks else None,
                    )
                    for d in config.datasets
                ),
                options=parse_options({**config.to_dict()["options"], **overrides}),
                tasks=chosen,
                output=output.resolve() if output else config.output,
            )
        else:
            if not dataset:
                raise _fail("give a run file or at least one --dataset")
            from dermfm.models.registry import default_model_name

            raw = {
                "name": "eval",
                "output": str(output or Path("runs") / "eval"),
                "models": model or [default_model_name()],
                "datasets": [
                    {"dataset": d, "root": str(root), "split": split, "max_images": max_images}
                    for d in dataset
                ],
                "tasks": task or None,
                "options": overrides,
            }
            config = run_config_from_dict(raw, Path.cwd(), "command line")
        results = run_benchmark(config, show_progress=True)
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    _print_eval_summary(results)
    out.print(
        f"Report: {config.output / 'report.html'} (and report.md, results.json)", highlight=False
    )
    raise typer.Exit(1 if results["errors"] else 0)


@app.command("adapt")
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
        raise _fail(f"{output} exists: pass --overwrite to replace it")
    loaded = _load(model, checkpoint)
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
        raise _fail(str(exc)) from None
    if json_out:
        _print_json(fitted.to_dict())
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


def _print_eval_summary(results: dict[str, Any]) -> None:
    from dermfm.evaluate.report import cell

    table = Table(
        "model",
        "dataset",
        "n",
        "accuracy",
        "balanced accuracy",
        "macro AUROC",
        title="Zero-shot (95% bootstrap intervals)",
    )
    for run in results["runs"]:
        found = (run.get("zeroshot") or {}).get("metrics", {})
        table.add_row(
            run["model"],
            run["dataset"],
            str(run.get("n_images", 0)),
            *(cell(found.get(k)) for k in ("accuracy", "balanced_accuracy", "macro_auroc")),
        )
    out.print(table)
    for error in results["errors"]:
        err.print(
            "[red]error:[/red] " + ", ".join(f"{k}: {v}" for k, v in error.items()),
            highlight=False,
            soft_wrap=True,
        )


SaeArg = Annotated[Path, typer.Argument(help="SAE folder (written by `dermfm sae train`).")]
DatasetOpt = Annotated[
    list[str] | None,
    typer.Option("--dataset", "-d", help="Dataset spec name or YAML file (repeatable)."),
]
RootOpt = Annotated[Path, typer.Option(help="Folder holding the dataset(s).")]


def _sae_and_model(folder: Path, model: str | None) -> tuple[Any, Any]:
    """The SAE of ``folder`` and the model it was trained on (or ``model``), checked to fit."""
    from dermfm.errors import DermfmError
    from dermfm.interpret.sae import load_sae

    try:
        sae = load_sae(folder)
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    loaded = _load(model or sae.metadata.get("model"), None)
    if loaded.embed_dim != sae.config.d_in:
        raise _fail(
            f"{folder}: the SAE reads {sae.config.d_in}-d embeddings but model {loaded.name!r} "
            f"gives {loaded.embed_dim}-d ones; pass the model it was trained on (--model)"
        )
    return sae, loaded


def _read_datasets(datasets: list[str] | None, root: Path) -> list[Any]:
    from dermfm.data import read_dataset
    from dermfm.errors import DermfmError

    if not datasets:
        raise _fail("give at least one --dataset")
    try:
        return [read_dataset(d, root) for d in datasets]
    except DermfmError as exc:
        raise _fail(str(exc)) from None


@sae_app.command("train")
def sae_train(
    output: Annotated[Path, typer.Argument(help="SAE folder to write.")],
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    root: RootOpt = Path("../shared/data"),
    split: Annotated[str, typer.Option(help="Split whose embeddings train the SAE.")] = "train",
    eval_split: Annotated[
        str, typer.Option(help="Split for the metrics and the accuracy recovered.")
    ] = "test",
    artifact_images: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also train on this many training images with a synthetic artifact drawn on "
            "them (ruler, ink, hair, dark corners, gel, watermark), so artifact latents form.",
        ),
    ] = 0,
    option: Annotated[
        list[str] | None,
        typer.Option("--set", help="SAE setting key=value: n_latents, k, kind, epochs... "),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing SAE folder.")] = False,
    store: StoreOpt = None,
) -> None:
    """Train a sparse autoencoder on the cached image embeddings of datasets' split."""

    from dermfm.errors import DermfmError
    from dermfm.interpret.pipeline import train_on_datasets

    settings = _key_values(option)
    loaded = _load(model, None)
    data = _read_datasets(dataset, root)
    try:
        result = train_on_datasets(
            loaded,
            data,
            output,
            split=split,
            eval_split=eval_split,
            settings=settings,
            artifact_images=artifact_images,
            overwrite=overwrite,
            stores=store or (),
            show_progress=True,
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    table = Table("metric", "train", eval_split, title=f"SAE written to {output}")
    for key, value in result["metrics"]["train"].items():
        table.add_row(
            key, f"{value:.4f}", f"{result['metrics']['eval'].get(key, float('nan')):.4f}"
        )
    out.print(table)
    for name, found in result["accuracy_recovered"].items():
        acc = found["accuracy"]
        out.print(
            f"{name}: zero-shot accuracy {acc['original']:.3f} original, "
            f"{acc['reconstructed']:.3f} reconstructed ({acc['recovered']:.1%} recovered)",
            highlight=False,
        )


@sae_app.command("name")
def sae_name(
    sae: SaeArg,
    model: ModelOpt = None,
    words: Annotated[
        Path | None, typer.Option(help="Extra words (one per line): an open vocabulary.")
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Vocabulary kinds (condition, concept, colour, body_site, artifact)."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Names per latent.")] = 5,
) -> None:
    """Name every latent by the vocabulary terms closest to its decoder direction."""
    from dermfm.errors import DermfmError
    from dermfm.interpret.naming import (
        load_vocabulary,
        name_latents,
        text_embeddings,
        write_names_table,
    )

    found, loaded = _sae_and_model(sae, model)
    try:
        vocabulary = load_vocabulary(kind or None, extra_words=words)
    except DermfmError as exc:
        raise _fail(str(exc)) from None
    names = name_latents(found.directions, text_embeddings(loaded, vocabulary), vocabulary, top=top)
    csv_path, md_path = write_names_table(names, sae / "names")
    table = Table("latent", "names (score)", "margin", title="Latent names (first 20)")
    for item in names[:20]:
        table.add_row(
            str(item.latent),
            ", ".join(f"{n.term} ({n.score:.2f})" for n in item.names),
            f"{item.margin:.3f}",
        )
    out.print(table)
    out.print(f"All {len(names)} latents: {csv_path}, {md_path}", highlight=False)


@sae_app.command("gallery")
def sae_gallery(
    sae: SaeArg,
    output: Annotated[Path, typer.Argument(help="Folder for index.html and the grids.")],
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    root: RootOpt = Path("../shared/data"),
    split: Annotated[str, typer.Option(help="Split whose images are browsed.")] = "test",
    k: Annotated[int, typer.Option(min=1, help="Top images per latent.")] = 16,
    max_latents: Annotated[int | None, typer.Option(min=1, help="Latents shown.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing gallery.")] = False,
) -> None:
    """An HTML gallery of the latents: each latent's top-activating images and its names."""
    from dermfm.errors import DermfmError
    from dermfm.interpret.gallery import write_gallery
    from dermfm.interpret.pipeline import embed_splits, latent_names

    found, loaded = _sae_and_model(sae, model)
    data = _read_datasets(dataset, root)
    try:
        split_data = embed_splits(loaded, data, split, show_progress=True)
        index = write_gallery(
            output,
            found.encode(split_data.vectors),
            split_data.records,
            latent_names(found, loaded),
            k=k,
            max_latents=max_latents,
            overwrite=overwrite,
            show_progress=True,
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out.print(f"Gallery: {index}", highlight=False)


@sae_app.command("explain")
def sae_explain(
    sae: SaeArg,
    images: Annotated[
        list[Path] | None, typer.Argument(help="Images whose active latents are listed.")
    ] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Latents per image or class.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Each image's active latents with their names."""
    from dermfm.interpret.gallery import explain_image, format_explanation
    from dermfm.interpret.pipeline import latent_names

    found, loaded = _sae_and_model(sae, model)
    paths = _inputs(images or [])
    embedded = loaded.embed_images(paths, show_progress=len(paths) > 1)
    names = latent_names(found, loaded)
    activations = found.encode(embedded.vectors)
    payload = []
    for row, i in enumerate(embedded.ok):
        items = explain_image(activations[row], names, top=top)
        if json_out:
            payload.append(
                {
                    "image": str(paths[i]),
                    "latents": [
                        {
                            "latent": it.latent,
                            "value": it.value,
                            "names": list(it.names),
                        }
                        for it in items
                    ],
                }
            )
        else:
            out.print(format_explanation(items, image=str(paths[i])), highlight=False)
    if json_out:
        _print_json(payload)
    for i, error in embedded.errors.items():
        err.print(f"[red]error:[/red] {paths[i]}: {error.reason}", highlight=False)
    raise typer.Exit(1 if embedded.errors else 0)


@sae_app.command("bottleneck")
def sae_bottleneck(
    sae: SaeArg,
    model: ModelOpt = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset spec.")] = "ham10000",
    root: RootOpt = Path("../shared/data"),
    suppress_artifacts: Annotated[
        bool, typer.Option("--suppress-artifacts", help="Zero the SAE's artifact latents.")
    ] = False,
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples.")] = 1000,
    json_out: JsonOpt = False,
) -> None:
    """A concept-bottleneck classifier on SAE codes, compared with a linear probe on the raw
    embeddings (same images, paired bootstrap), and the latents each class rests on."""
    from dermfm.errors import DermfmError
    from dermfm.interpret import load_suppressor
    from dermfm.interpret.pipeline import bottleneck_report

    found, loaded = _sae_and_model(sae, model)
    (data,) = _read_datasets([dataset], root)
    try:
        suppressor = load_suppressor(loaded, sae) if suppress_artifacts else None
        report = bottleneck_report(
            loaded, found, data, suppressor=suppressor, n_boot=n_boot, show_progress=True
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if json_out:
        _print_json({k: v for k, v in report.items() if k != "markdown"})
        return
    out.print(report["markdown"], highlight=False)
    for cls, latents in report["explanations"].items():
        terms = "; ".join(
            f"{w['latent']} ({w['weight']:+.2f}: {', '.join(w['names'][:2])})" for w in latents
        )
        out.print(f"[bold]{cls}[/bold]: {terms}", highlight=False)


@sae_app.command("suppress")
def sae_suppress(
    sae: SaeArg,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    root: RootOpt = Path("../shared/data"),
    split: Annotated[str, typer.Option(help="Split whose images are used.")] = "val",
    images: Annotated[int, typer.Option(min=10, help="Images per artifact kind.")] = 200,
    min_effect: Annotated[
        float, typer.Option(help="Smallest effect size (Cohen's d) for an artifact latent.")
    ] = 0.8,
    top: Annotated[int, typer.Option(min=1, help="Most latents kept per artifact.")] = 3,
) -> None:
    """Find the SAE's artifact latents (images with and without each artifact) and store them
    in the SAE folder, for `dermfm diagnose --suppress-artifacts --sae FOLDER`."""
    import json

    from dermfm.cache import atomic_write_bytes
    from dermfm.errors import DermfmError
    from dermfm.interpret import ARTIFACTS_FILE
    from dermfm.interpret.pipeline import find_artifacts

    found, loaded = _sae_and_model(sae, model)
    data = _read_datasets(dataset, root)
    records = [r for d in data for r in d.splits.get(split, [])]
    try:
        suppressor, latents = find_artifacts(
            loaded, found, records, n=images, top=top, min_effect=min_effect, show_progress=True
        )
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    doc = {
        **suppressor.to_dict(),
        "found": {k: [list(x) for x in v] for k, v in latents.items()},
        "method": f"contrast of {images} {split} images with and without each artifact",
    }
    path = sae / ARTIFACTS_FILE
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode("utf-8"))
    table = Table("artifact", "latents (effect size)", title="Artifact latents")
    for kind, scored in latents.items():
        table.add_row(kind, ", ".join(f"{x.latent} ({x.score:.2f})" for x in scored) or "none")
    out.print(table)
    out.print(f"Written to {path}", highlight=False)


# The assistant's commands (consult, chat, assistant ...) live with the assistant, the
# server's (serve, server ...) with the server.
from dermfm.assistant.cli import register  # noqa: E402
from dermfm.server.cli import register as register_server  # noqa: E402

register(app)
register_server(app)


if __name__ == "__main__":  # pragma: no cover
    app()
