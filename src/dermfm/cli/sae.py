"""``dermfm sae train|name|gallery|explain|bottleneck|suppress``: sparse autoencoders on image
embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dermfm.cli.common import (
    JsonOpt,
    ModelOpt,
    StoreOpt,
    err,
    fail,
    inputs,
    key_values,
    load_model_or_fail,
    out,
    print_json,
)

sae_app = typer.Typer(
    help="Sparse autoencoders on image embeddings: train, name latents, browse them, explain "
    "images and classifiers, find and suppress artifact latents.",
    no_args_is_help=True,
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
        raise fail(str(exc)) from None
    loaded = load_model_or_fail(model or sae.metadata.get("model"), None)
    if loaded.embed_dim != sae.config.d_in:
        raise fail(
            f"{folder}: the SAE reads {sae.config.d_in}-d embeddings but model {loaded.name!r} "
            f"gives {loaded.embed_dim}-d ones; pass the model it was trained on (--model)"
        )
    return sae, loaded


def _read_datasets(datasets: list[str] | None, root: Path) -> list[Any]:
    from dermfm.data import read_dataset
    from dermfm.errors import DermfmError

    if not datasets:
        raise fail("give at least one --dataset")
    try:
        return [read_dataset(d, root) for d in datasets]
    except DermfmError as exc:
        raise fail(str(exc)) from None


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

    settings = key_values(option)
    loaded = load_model_or_fail(model, None)
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
        raise fail(str(exc)) from None
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
        raise fail(str(exc)) from None
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
        raise fail(str(exc)) from None
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
    paths = inputs(images or [])
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
        print_json(payload)
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
        raise fail(str(exc)) from None
    if json_out:
        print_json({k: v for k, v in report.items() if k != "markdown"})
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
        raise fail(str(exc)) from None
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
