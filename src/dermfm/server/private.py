"""Files and folders of the server's data (database, images) private to the account that runs
it: folders ``0700`` and files ``0600`` whatever the umask, since they hold patient data."""

from __future__ import annotations

import os
from pathlib import Path

#: Mode of the server's folders: only the owner may list, enter or write them.
PRIVATE_DIR_MODE = 0o700

#: Mode of the server's files: only the owner may read or write them.
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | Path, *, tighten: bool = True) -> Path:
    """Create the folder ``path`` (and missing parents) if needed and make it ``0700``.

    Args:
        path: the folder.
        tighten: also make an existing folder ``0700``; ``False`` leaves an existing folder's
            mode alone (for a folder the user chose, such as the data folder).

    Only ``path`` itself is changed; parents that had to be created get the umask's mode. Each
    folder created is made durable at once (its entry fsynced in its parent), so a file later
    synced inside it cannot be lost with its folder in a crash.
    """
    from dermfm.cache import fsync_dir

    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.is_dir()]
    path.mkdir(parents=True, exist_ok=True)
    if tighten or path in created:
        os.chmod(path, PRIVATE_DIR_MODE)
    for folder in reversed(created):  # outermost first
        fsync_dir(folder.parent)
    return path


def private_file(path: str | Path) -> Path:
    """Create the empty file ``path`` if it does not exist (its folder must) and make it
    ``0600``; an existing file keeps its content. SQLite gives a database's ``-wal``, ``-shm``
    and ``-journal`` files the mode of the database file, so they are private too."""
    path = Path(path)
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE)
    os.close(descriptor)
    os.chmod(path, PRIVATE_FILE_MODE)
    return path


__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "private_dir", "private_file"]
