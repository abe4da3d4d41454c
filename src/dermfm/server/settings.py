"""Settings of one ``dermfm serve`` process (command-line options or ``DERMFM_*`` variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
        max_upload_mb: largest ``multipart/form-data`` request body (image uploads).
        max_body_kb: largest request body of any other kind (JSON).
        max_pixels: largest image decoded, read from its header before any pixel is allocated
            (30 megapixels: a 24 MP phone photo passes; a decode holds at most
            :data:`dermfm.io.PEAK_BYTES_PER_PIXEL` bytes per pixel, 360 MB at this budget).
        image_slots: requests that decode images or run the assistant at once (the others
            wait), so that images cost at most ``image_slots`` times one decode.
        hash_slots: password hashes computed at once (19 MiB each).
        max_label_classes: most classes in a list of class names sent to ``/api/diagnose``.
        max_frames: most frames of a multi-frame DICOM upload (each one is an input).
        rate_per_minute / burst: per-user token-bucket rate limit.
        batch_max / batch_wait_ms: micro-batching of image embeddings (1: no batching).
        login_hours: lifetime of the tokens that ``/api/login`` hands out.
        login_free_failures: failed sign-ins of one account from one address before each
            further attempt has to wait.
        login_backoff_s / login_backoff_max_s: the first wait, doubled with every further
            failure up to the cap (a correct password after the wait signs in).
        address_failures_burst / address_failures_per_minute: failed sign-ins one address
            may make (to any accounts) at once, and how fast that allowance comes back.
        forwarded_allow_ips: addresses of reverse proxies whose ``X-Forwarded-For`` and
            ``X-Forwarded-Proto`` headers are trusted (comma-separated, ``*`` for any); ``None``
            trusts none, so the client address is the TCP peer's.
        pacs_url: DICOMweb base URL of the PACS that ``POST /api/pacs/studies/{uid}`` pulls
            studies from and stores results in (``None``: no PACS). Requests never name a URL.
        adapters: packaged label-set name (``assistant`` for the assistant) -> adapter file
            (``dermfm adapt``) used for it; other label sets use the model's shipped adapter,
            if any. Requests never name adapter files.
    """

    data_dir: Path
    database_url: str | None = None
    model: str | None = None
    cases_index: Path | None = None
    max_upload_mb: float = 15.0
    max_body_kb: float = 64.0
    max_pixels: int = 30_000_000
    image_slots: int = 2
    hash_slots: int = 4
    max_label_classes: int = 50
    max_frames: int = 32
    rate_per_minute: float = 120.0
    burst: int = 30
    batch_max: int = 16
    batch_wait_ms: float = 5.0
    login_hours: float = 12.0
    login_free_failures: int = 5
    login_backoff_s: float = 1.0
    login_backoff_max_s: float = 300.0
    address_failures_burst: int = 30
    address_failures_per_minute: float = 2.0
    forwarded_allow_ips: str | None = None
    pacs_url: str | None = None
    adapters: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The database URL actually used."""
        from dermfm.server.db import default_url

        return self.database_url or default_url(self.data_dir)

    @property
    def images_dir(self) -> Path:
        """The content-addressed image store."""
        return self.data_dir / "images"

    @property
    def upload_limit(self) -> int:
        """:attr:`max_upload_mb` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def body_limit(self) -> int:
        """:attr:`max_body_kb` in bytes."""
        return int(self.max_body_kb * 1024)


__all__ = ["ServerSettings", "default_data_dir"]
