"""Finding weights on the Hugging Face Hub or in its local cache, offline-safe.

A model that is cached loads without touching the network. A model that is not cached is
downloaded only when the Hub answers within seconds; otherwise a :class:`ModelNotAvailableError`
explains how to obtain the weights and how to point dermfm at a local copy. Nothing here hangs.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from dermfm.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from dermfm.models.registry import RegistryEntry

#: Seconds to wait for the Hub to accept a connection before giving up.
CONNECT_TIMEOUT = 5.0
_TRUTHY = {"1", "true", "yes", "on"}


def repo_for(entry: RegistryEntry) -> str:
    """The Hub repository that holds ``entry``'s weights."""
    if entry.id.startswith("hf-hub:"):
        return entry.id[len("hf-hub:") :]
    if entry.backend == "open_clip" and entry.pretrained:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(entry.id, entry.pretrained)
        if not cfg.get("hf_hub"):
            raise ModelNotAvailableError(
                f"open_clip has no Hub copy of {entry.id}/{entry.pretrained}"
            )
        return str(cfg["hf_hub"]).strip("/")
    return entry.id


def offline() -> bool:
    """Whether the user asked for offline operation (``HF_HUB_OFFLINE`` or ``DERMFM_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUTHY
        for var in ("HF_HUB_OFFLINE", "DERMFM_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def endpoint() -> str:
    """The Hub endpoint in use (``HF_ENDPOINT`` when set)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def local_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder of ``repo``, or ``None``; never uses the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached, or a partial cache entry: both mean "not here"
        return None


def _unreachable_reason() -> str | None:
    """Why the Hub cannot be used now, or ``None`` if it accepted a connection."""
    if offline():
        return "offline mode is on (HF_HUB_OFFLINE/DERMFM_OFFLINE)"
    url = urlparse(endpoint())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)

    def connect() -> None:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass

    # a thread bounds the name lookup too, which socket timeouts do not cover
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=2 * CONNECT_TIMEOUT)
        return None
    except FutureTimeout:
        return f"the Hub at {endpoint()} did not answer within {2 * CONNECT_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"the Hub at {endpoint()} cannot be reached ({exc.strerror or exc})"
    finally:
        pool.shutdown(wait=False)


def how_to_obtain(label: str, repo: str, gated: bool) -> str:
    """The instructions shown when weights are missing."""
    folder = repo.split("/")[-1]
    gate = (
        f"\n  The model is gated: accept its terms on the Hub page of {repo} and log in "
        "(`hf auth login`) before downloading."
        if gated
        else ""
    )
    return (
        f"To get it, on a machine with internet access run:\n"
        f"    hf download {repo} --local-dir {folder}{gate}\n"
        f"then copy the folder here and pass its path instead of the name:\n"
        f"    dermfm diagnose IMAGE --model /path/to/{folder}\n"
        f"(or copy the Hugging Face cache folder models--{repo.replace('/', '--')} into this "
        f"machine's HF_HOME/hub and keep using '{label}')."
    )


def ensure_snapshot(label: str, repo: str, gated: bool = False) -> Path:
    """A local folder with ``repo``'s files: from the cache, or downloaded if the Hub answers."""
    local = local_snapshot(repo)
    if local is not None:
        return local
    reason = _unreachable_reason()
    if reason is None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            return Path(snapshot_download(repo, etag_timeout=CONNECT_TIMEOUT))
        except GatedRepoError:
            reason = "the repository is gated and this machine has no access token for it"
            gated = True
        except RepositoryNotFoundError:
            reason = "the Hub has no such repository (or it is private)"
        except Exception as exc:  # network errors of every kind end the same way
            reason = f"the download failed ({type(exc).__name__}: {exc})"
    raise ModelNotAvailableError(
        f"Model '{label}' ({repo}) is not on this machine and cannot be downloaded: {reason}.\n"
        + how_to_obtain(label, repo, gated)
    )
