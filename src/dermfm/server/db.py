"""The server's database: SQLAlchemy 2 models, engines and Alembic migrations.

Tables: ``users`` (with their status), ``tokens`` (only SHA-256 hashes of tokens), ``cases`` with
their ``messages`` and ``reports`` (deleted with the case), and the ``audit`` log (whose entries
outlive the case).
Times are ISO 8601 UTC texts as :func:`dermfm.assistant.report.now` writes them (the case model's
own format, so a case reads back exactly as it was saved). SQLite is the default (a file in the
data folder, WAL journal, every commit synced to disk); any SQLAlchemy URL works, e.g.
PostgreSQL. The schema is created and upgraded only by Alembic (:func:`migrate`); the revisions
live in the ``migrations`` folder beside this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dermfm.server.private import private_dir, private_file

#: The Alembic scripts (``env.py``, ``versions/``) shipped with the package.
MIGRATIONS = Path(__file__).with_name("migrations")

#: Execution option naming how SQLite transactions begin (``DEFERRED`` or ``IMMEDIATE``);
#: writers use ``IMMEDIATE`` so that concurrent writers queue instead of failing mid-transaction.
SQLITE_BEGIN = "sqlite_begin"

#: Settings applied to every SQLite connection: WAL (readers never block the writer), a commit
#: is synced to disk before it returns (it survives a killed process or a power loss), foreign
#: keys enforced (cascading deletes), and waiting up to 5 s for a lock instead of failing.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)

_TIME = String(64)


class Base(DeclarativeBase):
    """Declarative base of the server's tables (constraint names are fixed by convention)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class UserRow(Base):
    """An account: ``clinician`` or ``admin``, with a password hash (argon2id; scrypt from
    before revision 0002 until the next sign-in; empty once deleted) and a status (``active``,
    ``disabled`` or ``deleted``)."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created: Mapped[str] = mapped_column(_TIME)
    status: Mapped[str] = mapped_column(String(16), server_default="active")


class TokenRow(Base):
    """A bearer token of a user (``login`` or long-lived ``api``), stored as its SHA-256."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(
        String(64), ForeignKey("users.name", ondelete="CASCADE"), index=True
    )
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    created: Mapped[str] = mapped_column(_TIME)
    expires_at: Mapped[str] = mapped_column(_TIME)


class CaseRow(Base):
    """One consultation: its owner, image and patient details (JSON), and the lowercased text
    that case search matches."""

    __tablename__ = "cases"

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"), index=True)
    created: Mapped[str] = mapped_column(_TIME, index=True)
    updated: Mapped[str] = mapped_column(_TIME)
    source: Mapped[str] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(String(80), doc="stored image file name")
    image_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    patient: Mapped[str] = mapped_column(Text)
    search_text: Mapped[str] = mapped_column(Text)


class MessageRow(Base):
    """One turn of a case's conversation, at its position (0, 1, ...)."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("case_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("cases.case_id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    time: Mapped[str] = mapped_column(_TIME)


class ReportRow(Base):
    """One version (1, 2, ...) of a case's report, as the report's JSON."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("case_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("cases.case_id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[str] = mapped_column(_TIME)
    body: Mapped[str] = mapped_column(Text)


class AuditRow(Base):
    """Who did what to which case, and when (no foreign key: entries outlive the case)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[str] = mapped_column(_TIME)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text)


def default_url(data_dir: str | Path) -> str:
    """The SQLite database file ``dermfm.db`` in the server's data folder."""
    return f"sqlite:///{Path(data_dir).resolve() / 'dermfm.db'}"


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions itself: ``_sqlite_begin`` does, in the right mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets :data:`SQLITE_PRAGMAS` on every connection, may be
    used from any thread, and its file is private (``0600``, its folder ``0700`` when it is
    created here); transactions begin ``DEFERRED`` unless the :data:`SQLITE_BEGIN` execution
    option says ``IMMEDIATE``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database)
        private_dir(database.parent, tighten=False)
        private_file(database)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration (built in code, no ini file) running the packaged migrations on
    ``connection``; e.g. ``command.revision(alembic_config(c), "...", autogenerate=True)``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def migrate(url: str) -> None:
    """Create or upgrade the database at ``url`` to the newest schema (``alembic upgrade
    head``); does nothing when it is already there. Safe to run from several processes at once
    on SQLite (the upgrade takes the write lock first)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            command.upgrade(
                alembic_config(connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})),
                "head",
            )
    finally:
        engine.dispose()


__all__ = [
    "MIGRATIONS",
    "SQLITE_BEGIN",
    "SQLITE_PRAGMAS",
    "AuditRow",
    "Base",
    "CaseRow",
    "MessageRow",
    "ReportRow",
    "TokenRow",
    "UserRow",
    "alembic_config",
    "default_url",
    "make_engine",
    "migrate",
]
