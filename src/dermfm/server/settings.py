"""Settings of one ``dermfm serve`` process (command-line options or ``DERMFM_*`` variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    """``$DERMFM_DATA`` or ``~/.dermfm/server``: the database (SQLite) and the image store."""
    return Path(os.environ.get("DERMFM_DATA") or Path.home() / ".dermfm" / "server")


@dataclass
class ServerSettings:
    """What a server process uses.

    Attributes:
        data_dir: folder of the SQLite database and of the content-addressed images.
        database_url: a SQLAlchemy URL (``postgresql+psycopg://...``); default SQLite in
            ``data_dir``.
        model: registry name or path of the model (default: the bundled one).
        cases_index: a ``dermfm index build`` folder for search and similar cases.
        max_upload_mb: largest request body accepted.
        rate_per_minute / burst: per-token token-bucket rate limit.
        batch_max / batch_wait_ms: micro-batching of image embeddings (1: no batching).
        login_hours: lifetime of the tokens that ``/api/login`` hands out.
    """

    data_dir: Path
    database_url: str | None = None
    model: str | None = None
    cases_index: Path | None = None
    max_upload_mb: float = 15.0
    rate_per_minute: float = 120.0
    burst: int = 30
    batch_max: int = 16
    batch_wait_ms: float = 5.0
    login_hours: float = 12.0

    @property
    def url(self) -> str:
        """The database URL actually used."""
        from dermfm.server.db import default_url

        return self.database_url or default_url(self.data_dir)

    @property
    def images_dir(self) -> Path:
        """The content-addressed image store."""
        return self.data_dir / "images"


__all__ = ["ServerSettings", "default_data_dir"]
