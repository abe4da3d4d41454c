"""``dermfm serve`` and ``dermfm server user|token`` (registered by :mod:`dermfm.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dermfm.cli import ModelOpt, _fail, err, out

server_app = typer.Typer(help="Users and API tokens of the server.", no_args_is_help=True)
user_app = typer.Typer(help="Server users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
server_app.add_typer(user_app, name="user")
server_app.add_typer(token_app, name="token")

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Data folder: SQLite database and images (default $DERMFM_DATA or ~/.dermfm/server).",
    ),
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="DERMFM_DATABASE_URL",
        help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/dermfm "
        "(default: SQLite in the data folder).",
    ),
]


def _settings(data: Path | None, db: str | None, **options: object) -> object:
    from dermfm.server.settings import ServerSettings, default_data_dir

    return ServerSettings(data_dir=data or default_data_dir(), database_url=db, **options)


def _database(data: Path | None, db: str | None) -> object:
    from dermfm.server.store import Database

    settings = _settings(data, db)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[attr-defined]
    return Database(settings.url)  # type: ignore[attr-defined]


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data: DataOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="Case index folder.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body.")] = 15.0,
    rate_per_minute: Annotated[float, typer.Option(help="Requests per token per minute.")] = 120.0,
    burst: Annotated[int, typer.Option(help="Requests a token may make at once.")] = 30,
    batch_max: Annotated[int, typer.Option(min=1, help="Images per model batch (1: off).")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="Wait to fill a batch.")] = 5.0,
) -> None:
    """Run the REST API and the web app (one process; OpenAPI at /docs)."""
    import uvicorn

    from dermfm.errors import DermfmError
    from dermfm.server.app import create_app

    settings = _settings(
        data,
        db,
        model=model,
        cases_index=cases,
        max_upload_mb=max_upload_mb,
        rate_per_minute=rate_per_minute,
        burst=burst,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
    )
    try:
        app = create_app(settings)  # type: ignore[arg-type]
    except (DermfmError, ValueError) as exc:
        raise _fail(str(exc)) from None
    err.print(
        f"dermfm serving on http://{host}:{port} (data: {settings.data_dir})",  # type: ignore[attr-defined]
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option(help="clinician or admin.")] = "clinician",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    data: DataOpt = None,
    db: DbOpt = None,
) -> None:
    """Create a user (the password is read from stdin, or asked for)."""
    from dermfm.server.store import ROLES

    if role not in ROLES:
        raise _fail(f"--role {role!r}: choose one of {', '.join(ROLES)}")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    database = _database(data, db)
    try:
        database.create_user(name, role, password)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    out.print(f"user {name} ({role}) created", highlight=False)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="User the token acts for.")],
    days: Annotated[float, typer.Option(help="Lifetime in days.")] = 90.0,
    data: DataOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API token (printed once; only its hash is stored)."""
    database = _database(data, db)
    if not database.user_exists(name):  # type: ignore[attr-defined]
        raise _fail(f"no user {name!r}: create it with `dermfm server user add {name}`")
    token, expires = database.create_token(name, days=days, kind="api")  # type: ignore[attr-defined]
    sys.stdout.write(token + "\n")
    err.print(f"expires {expires.isoformat()}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the server's commands to the main ``dermfm`` app."""
    app.command("serve")(serve_command)
    app.add_typer(server_app, name="server")
