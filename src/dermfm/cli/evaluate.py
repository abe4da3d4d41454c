"""``dermfm eval``: benchmark models on datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from dermfm.cli.common import StoreOpt, TtaOpt, err, fail, key_values, out


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

    overrides = key_values(option)
    if adapter:
        overrides["adapters"] = [a if a == "shipped" else str(Path(a).resolve()) for a in adapter]
    if tta:
        overrides["tta"] = True
    if store:
        overrides["stores"] = [str(p.resolve()) for p in store]
    try:
        if run_file is not None:
            if dataset:
                raise fail("give either a run file or --dataset, not both")
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
                raise fail("give a run file or at least one --dataset")
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
        raise fail(str(exc)) from None
    _print_eval_summary(results)
    out.print(
        f"Report: {config.output / 'report.html'} (and report.md, results.json)", highlight=False
    )
    raise typer.Exit(1 if results["errors"] else 0)


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
