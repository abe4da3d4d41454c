"""The one progress helper: a rich progress bar on a terminal, silence elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Advance(Protocol):
    """Callable that moves a progress bar forward by ``n`` items."""

    def __call__(self, n: int = 1) -> None: ...


@contextmanager
def progress(description: str, total: int, enabled: bool | None = None) -> Iterator[Advance]:
    """Show a progress bar for ``total`` items while the block runs.

    ``enabled=None`` shows it only when stderr is a terminal, so library calls stay silent in
    scripts and tests; the CLI passes ``True`` for long work.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 1:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
