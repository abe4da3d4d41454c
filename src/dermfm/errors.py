"""Exceptions raised by dermfm. Every message names the file or model it is about."""

from __future__ import annotations

from pathlib import Path


class DermfmError(Exception):
    """Base class of every error dermfm raises on purpose."""


class ImageError(DermfmError):
    """An input image could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SourceError(DermfmError):
    """A file (or other named source) that cannot be used: ``source`` says which and
    ``problem`` why; the message is ``"<source>: <problem>"``."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class KnowledgeError(SourceError):
    """A knowledge file (ontology, label set, concepts, templates) is missing or invalid."""


class ModelNotAvailableError(DermfmError):
    """The weights of a model are not on this machine and cannot be fetched."""


class ModelNotSupportedError(DermfmError):
    """A model is known, but dermfm refuses to load it (the reason is in the message)."""


class IndexStoreError(DermfmError):
    """A retrieval index folder is missing, incompatible or would be overwritten."""
