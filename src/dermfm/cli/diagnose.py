"""``dermfm models``, ``dermfm diagnose`` and ``dermfm concepts``: the registry, differential
diagnosis and concept scores of skin images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dermfm.cli.common import (
    ADAPTER_DISCLAIMER,
    DISCLAIMER,
    AdapterOpt,
    BatchOpt,
    CheckpointOpt,
    FastDecodeOpt,
    ImagesArg,
    JsonOpt,
    ModelOpt,
    NoAdapterOpt,
    PrecisionOpt,
    TtaOpt,
    adapter_choice,
    fail,
    inputs,
    load_model_or_fail,
    out,
    print_json,
    report_failures,
)


def models(json_out: JsonOpt = False) -> None:
    """List the registered models and where each would load from."""
    from dermfm.models import list_models

    rows = list_models()
    if json_out:
        print_json([r.to_dict() for r in rows])
        return
    table = Table(title="dermfm models", show_lines=True)
    for col in ("name", "backend", "published id", "licence", "loads from"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.name + (" (default)" if r.default else ""), r.backend, r.id, r.licence, r.location
        )
    out.print(table)


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

    paths = inputs(images)
    loaded = load_model_or_fail(model, checkpoint, precision)
    chosen = adapter_choice(adapter, no_adapter)
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
        raise fail(str(exc)) from None
    results = clf.diagnose(
        paths,
        top_k=top_k,
        batch_size=batch_size,
        show_progress=len(paths) > 1,
        tta=tta,
        fast_decode=fast_decode,
    )
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.ok:
                _print_diagnosis(r)
        out.print(f"[dim]{ADAPTER_DISCLAIMER if clf.adapter else DISCLAIMER}[/dim]")
    raise typer.Exit(report_failures(results))


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

    paths = inputs(images)
    loaded = load_model_or_fail(model, checkpoint, precision)
    try:
        annotator = ConceptAnnotator(loaded, select, threshold=threshold)
    except (KeyError, ValueError) as exc:
        raise fail(str(exc).strip("'\"")) from None
    results = annotator.annotate(paths, batch_size=batch_size, show_progress=len(paths) > 1)
    if json_out:
        print_json([r.to_dict() for r in results])
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
    raise typer.Exit(report_failures(results))
