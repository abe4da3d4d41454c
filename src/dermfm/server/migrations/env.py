"""Alembic environment of the dermfm server: runs on the connection that
:func:`dermfm.server.db.migrate` (or :func:`~dermfm.server.db.alembic_config`) passes in; there
is no ini file and no offline (SQL script) mode."""

from __future__ import annotations

from alembic import context

from dermfm.server.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        f"{__file__}: run the migrations through dermfm.server.db.migrate(url), which passes "
        "the database connection"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite can roll back schema changes too: an interrupted upgrade leaves nothing behind.
    transactional_ddl=True,
    # SQLite cannot ALTER most things: later revisions copy and move tables instead.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
