"""Account status: users can be disabled or deleted (``active`` | ``disabled`` | ``deleted``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``users.status``; every existing account is active."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("status", sa.String(length=16), server_default="active", nullable=False)
        )


def downgrade() -> None:
    """Drop ``users.status`` (disabled and deleted accounts become active again)."""
    with op.batch_alter_table("users") as batch:
        batch.drop_column("status")
