"""``dermfm train``: train or fine-tune a model from a recipe."""

from __future__ import annotations

from typing import Annotated

import typer

from dermfm.cli.common import fail, out


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
        raise fail(str(exc)) from None
    out.print(f"Model written to {folder} (load it with --model {folder}).", highlight=False)
