"""What every command group of the ``dermfm`` command line shares: the consoles, the disclaimers,
the common options, and the error handling (exit status 2 with a one-line message).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

#: Tables and messages (stdout) and errors and progress notes (stderr).
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


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit (status 2) for the caller to
    raise: ``raise fail("...") from None``."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def load_model_or_fail(model: str | None, checkpoint: Path | None, precision: str = "fp32") -> Any:
    """The model ``--model``/``--checkpoint``/``--precision`` name, or :func:`fail` with the
    reason it cannot be loaded."""
    from dermfm.errors import DermfmError
    from dermfm.models import load_model

    try:
        return load_model(model, checkpoint=checkpoint, precision=precision)
    except (DermfmError, ValueError) as exc:
        raise fail(str(exc)) from None


def adapter_choice(adapter: Path | None, no_adapter: bool) -> Any:
    """The ``adapter=`` value that ``--adapter`` / ``--no-adapter`` ask for: the loaded file,
    ``False``, or ``True`` (the model's shipped adapter for the label set, if any)."""
    from dermfm.adapters import load_adapter
    from dermfm.errors import DermfmError

    if adapter is not None and no_adapter:
        raise fail("give --adapter or --no-adapter, not both")
    if adapter is None:
        return not no_adapter
    try:
        return load_adapter(adapter)
    except DermfmError as exc:
        raise fail(str(exc)) from None


def inputs(images: list[Path]) -> list[Path]:
    """The image files of the IMAGES arguments (folders expanded), or :func:`fail` when there
    are none or a path is unusable."""
    from dermfm.errors import ImageError
    from dermfm.io import expand_inputs

    try:
        found = expand_inputs(images)
    except ImageError as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail("no images found in " + ", ".join(map(str, images)))
    return found


def report_failures(results: list[Any]) -> int:
    """Name each failed input (results with an ``error``) on stderr; the exit status: 1 when
    some failed, else 0."""
    failed = [r for r in results if r.error]
    for r in failed:
        err.print(f"[red]error:[/red] {r.source}: {r.error}", highlight=False, soft_wrap=True)
    if failed:
        err.print(f"{len(failed)} of {len(results)} inputs failed.", highlight=False)
    return 1 if failed else 0


def key_values(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` options as a mapping (values read as YAML: numbers, lists...)."""
    import yaml

    found: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--set {item!r}: expected key=value")
        found[key.strip()] = yaml.safe_load(value)
    return found


def print_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON (non-ASCII characters kept) on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
