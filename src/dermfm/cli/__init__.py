"""The ``dermfm`` command line: a thin layer over the public API (``dermfm.*``).

One module per command group; what they share (options, consoles, error handling) is in
:mod:`dermfm.cli.common`:

* :mod:`~dermfm.cli.diagnose`: ``models``, ``diagnose``, ``concepts``;
* :mod:`~dermfm.cli.train`, :mod:`~dermfm.cli.embed`, :mod:`~dermfm.cli.evaluate`,
  :mod:`~dermfm.cli.adapt`: ``train``, ``embed``, ``eval``, ``adapt``;
* :mod:`~dermfm.cli.index`, :mod:`~dermfm.cli.data`, :mod:`~dermfm.cli.sae`: the ``index``,
  ``data`` and ``sae`` groups;
* :mod:`~dermfm.cli.assistant`: ``consult``, ``chat`` and the ``assistant`` group;
* :mod:`~dermfm.cli.server`: ``serve`` and the ``server`` group.

Exit status: 0 all inputs processed, 1 some inputs failed (each named on stderr), 2 the command
could not run (bad option, model or index not available).
"""

from __future__ import annotations

import typer

from dermfm.cli import (
    adapt,
    assistant,
    data,
    diagnose,
    embed,
    evaluate,
    index,
    sae,
    server,
    train,
)

app = typer.Typer(
    help="Dermatology vision-language models: zero-shot differential diagnosis, clinical concept "
    "annotation and image retrieval. Decision support for clinicians, not a diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(diagnose.models)
app.command()(diagnose.diagnose)
app.command()(diagnose.concepts)
app.command("train")(train.train_command)
app.command("embed")(embed.embed_command)
app.command("eval")(evaluate.eval_command)
app.command("adapt")(adapt.adapt_command)
app.command("consult")(assistant.consult_command)
app.command("chat")(assistant.chat_command)
app.command("serve")(server.serve_command)
app.add_typer(index.index_app, name="index")
app.add_typer(data.data_app, name="data")
app.add_typer(sae.sae_app, name="sae")
app.add_typer(assistant.assistant_app, name="assistant")
app.add_typer(server.server_app, name="server")


def main() -> None:
    """Run the ``dermfm`` command line on ``sys.argv`` (the console script runs :data:`app`)."""
    app()


__all__ = ["app", "main"]
