"""The server's commands: ``dermfm serve``, ``dermfm server user
add|passwd|disable|enable|delete|list`` and ``dermfm server token create``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dermfm.cli.common import JsonOpt, ModelOpt, err, fail, out

if TYPE_CHECKING:
    from dermfm.server.settings import ServerSettings
    from dermfm.server.store import Database

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


def _settings(data: Path | None, db: str | None, **options: object) -> ServerSettings:
    from dermfm.server.settings import ServerSettings, default_data_dir

    return ServerSettings(data_dir=data or default_data_dir(), database_url=db, **options)  # type: ignore[arg-type]


def _database(data: Path | None, db: str | None) -> Database:
    from dermfm.server.private import private_dir
    from dermfm.server.store import Database

    settings = _settings(data, db)
    private_dir(settings.data_dir, tighten=False)
    return Database(settings.url)


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data: DataOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="Case index folder.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest image upload body.")] = 15.0,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Largest image decoded (pixels, from its header).")
    ] = 30_000_000,
    image_slots: Annotated[
        int, typer.Option(min=1, help="Requests decoding images or consulting at once.")
    ] = 2,
    rate_per_minute: Annotated[float, typer.Option(help="Requests per user per minute.")] = 120.0,
    burst: Annotated[int, typer.Option(help="Requests a user may make at once.")] = 30,
    batch_max: Annotated[int, typer.Option(min=1, help="Images per model batch (1: off).")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="Wait to fill a batch.")] = 5.0,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            envvar="FORWARDED_ALLOW_IPS",
            help="Reverse proxies whose X-Forwarded-For/-Proto headers are trusted "
            "(comma-separated addresses, * for any); default: none.",
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            help="LABEL_SET=FILE: score that packaged label set with this adapter "
            "(repeatable; 'assistant' for the assistant); default: the model's shipped ones.",
        ),
    ] = None,
    pacs: Annotated[
        str | None,
        typer.Option(
            "--pacs",
            envvar="DERMFM_PACS",
            help="DICOMweb base URL of the PACS whose studies users may open by Study Instance "
            "UID, e.g. http://pacs:8042/dicom-web (docs/interop.md).",
        ),
    ] = None,
) -> None:
    """Run the REST API and the web app (one process; OpenAPI at /docs)."""
    import logging

    import uvicorn

    from dermfm.errors import DermfmError
    from dermfm.server.app import create_app

    pairs = [item.partition("=") for item in adapter or []]
    if any(not name or not sep or not file for name, sep, file in pairs):
        raise fail("--adapter takes LABEL_SET=FILE, e.g. --adapter pad6=clinic.safetensors")
    settings = _settings(
        data,
        db,
        model=model,
        cases_index=cases,
        adapters={name: Path(file) for name, _, file in pairs},
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        image_slots=image_slots,
        rate_per_minute=rate_per_minute,
        burst=burst,
        batch_max=batch_max,
        batch_wait_ms=batch_wait_ms,
        forwarded_allow_ips=forwarded_allow_ips,
        pacs_url=pacs,
    )
    try:
        app = create_app(settings)
    except (DermfmError, ValueError) as exc:
        raise fail(str(exc)) from None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    where = f"http://{host}:{port} (data: {settings.data_dir})"
    err.print(f"dermfm serving on {where}", highlight=False)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin.")
]
UserArg = Annotated[str, typer.Argument(help="User name.")]

#: The actor the audit log names for changes made with these commands.
CLI_ACTOR = "cli"


@user_app.command("add")
def user_add(
    name: UserArg,
    role: Annotated[str, typer.Option(help="clinician or admin.")] = "clinician",
    password_stdin: PasswordStdinOpt = False,
    data: DataOpt = None,
    db: DbOpt = None,
) -> None:
    """Create a user (the password is read from stdin, or asked for)."""
    from dermfm.server.store import ROLES, UserError

    if role not in ROLES:
        raise fail(f"--role {role!r}: choose one of {', '.join(ROLES)}")
    password = _password(password_stdin)
    try:
        _database(data, db).create_user(name, role, password)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(f"user {name} ({role}) created", highlight=False)


@user_app.command("passwd")
def user_passwd(
    name: UserArg, password_stdin: PasswordStdinOpt = False, data: DataOpt = None, db: DbOpt = None
) -> None:
    """Set a user's password (from stdin, or asked for); every token of theirs is revoked."""
    from dermfm.server.store import UserError

    password = _password(password_stdin)
    try:
        revoked = _database(data, db).set_password(name, password, actor=CLI_ACTOR)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(f"password of {name} changed; {revoked} token(s) revoked", highlight=False)


def _set_status(name: str, status: str, data: Path | None, db: str | None) -> None:
    from dermfm.server.store import UserError

    try:
        _database(data, db).set_status(name, status, actor=CLI_ACTOR)
    except UserError as exc:
        raise fail(str(exc)) from None
    out.print(f"user {name} {'enabled' if status == 'active' else status}", highlight=False)


@user_app.command("disable")
def user_disable(name: UserArg, data: DataOpt = None, db: DbOpt = None) -> None:
    """Disable a user: no sign-in, every token revoked; their cases stay."""
    _set_status(name, "disabled", data, db)


@user_app.command("enable")
def user_enable(name: UserArg, data: DataOpt = None, db: DbOpt = None) -> None:
    """Enable a disabled user again."""
    _set_status(name, "active", data, db)


@user_app.command("delete")
def user_delete(
    name: UserArg,
    transfer_to: Annotated[
        str | None, typer.Option("--transfer-to", help="Hand the user's cases to this user.")
    ] = None,
    data: DataOpt = None,
    db: DbOpt = None,
) -> None:
    """Delete a user: no sign-in ever again, tokens and password removed, the name stays
    taken; their cases are kept (admins see them) or handed over with --transfer-to."""
    from dermfm.server.store import UserError

    try:
        moved = _database(data, db).delete_user(name, actor=CLI_ACTOR, transfer_to=transfer_to)
    except UserError as exc:
        raise fail(str(exc)) from None
    handed = f"; {moved} case(s) handed to {transfer_to}" if transfer_to else ""
    out.print(f"user {name} deleted{handed}", highlight=False)


@user_app.command("list")
def user_list(json_output: JsonOpt = False, data: DataOpt = None, db: DbOpt = None) -> None:
    """Every user with role, status, creation time and number of cases."""
    accounts = _database(data, db).users()
    if json_output:
        sys.stdout.write(json.dumps(accounts, indent=2) + "\n")
        return
    table = Table("name", "role", "status", "created", "cases")
    for account in accounts:
        table.add_row(
            account["name"],
            account["role"],
            account["status"],
            account["created"],
            str(account["cases"]),
        )
    out.print(table)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="User the token acts for.")],
    days: Annotated[float, typer.Option(help="Lifetime in days.")] = 90.0,
    data: DataOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API token (printed once; only its hash is stored)."""
    database = _database(data, db)
    if not database.user_exists(name):
        raise fail(f"no user {name!r}: create it with `dermfm server user add {name}`")
    token, expires = database.create_token(name, days=days, kind="api")
    sys.stdout.write(token + "\n")
    err.print(f"expires {expires.isoformat()}", highlight=False)
