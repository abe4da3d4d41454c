"""Micro-batching: requests that arrive together share one model call.

Each request thread calls :meth:`MicroBatcher.submit` and blocks; one worker thread takes the
first waiting item, gathers more until ``max_batch`` items or ``max_wait_ms`` have passed, runs
the batch function once and hands every caller its own result. Under load the model sees batches
instead of single images; an idle server adds at most ``max_wait_ms`` to a request.

The server validates and preprocesses every image *before* submitting it, so one bad upload can
never fail the batch it would have shared: an exception raised by the batch function reaches
every caller of that batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import torch

    from dermfm.models import DermModel

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchStats:
    """What a batcher has run so far.

    Attributes:
        batches: calls of the batch function.
        items: items processed (failed batches included).
        largest: size of the largest batch.
    """

    batches: int = 0
    items: int = 0
    largest: int = 0

    @property
    def mean_batch_size(self) -> float:
        """Items per batch (0.0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0


class _Pending(Generic[T, R]):
    """One submitted item and, once its batch has run, its result or the batch's exception."""

    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


_STOP = object()  # queued by close(): the worker finishes what is ahead of it, then exits


class MicroBatcher(Generic[T, R]):
    """Gathers items submitted from many threads into batches for one function.

    Args:
        fn: ``fn(items) -> results``, one result per item, in order; called from the worker
            thread only, so it never runs twice at once.
        max_batch: most items per call of ``fn``; ``1`` runs every item alone (no batching,
            same code path).
        max_wait_ms: how long the worker waits for more items after the first one of a batch.
        name: name of the worker thread.

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        name: str = "dermfm-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self._queue: queue.SimpleQueue[_Pending[T, R] | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._stats = BatchStats()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: T) -> R:
        """Queue ``item``, block until its batch has run and return its result.

        Raises:
            RuntimeError: the batcher is closed.
            Exception: whatever ``fn`` raised for the batch this item was part of.
        """
        pending: _Pending[T, R] = _Pending(item)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed; no new items are accepted")
            self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    @property
    def stats(self) -> BatchStats:
        """Batches and items run so far."""
        with self._lock:
            return self._stats

    @property
    def waiting(self) -> int:
        """Items queued that the worker has not taken yet (approximate under concurrency)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._worker.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting items, finish the ones already queued and stop the worker.

        Idempotent. Waits at most ``timeout`` seconds (``None``: until the worker has exited).
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._worker.join(timeout)

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Pending[T, R]] = [first]  # type: ignore[list-item]
            deadline = time.monotonic() + self.max_wait_ms / 1000.0
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = list(self.fn([p.item for p in batch]))
            if len(results) != len(batch):
                raise ValueError(
                    f"the batch function returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # delivered to every caller of the batch, never lost
            for p in batch:
                p.error = exc
        else:
            for p, result in zip(batch, results, strict=True):
                p.result = result
        with self._lock:
            s = self._stats
            self._stats = BatchStats(
                s.batches + 1, s.items + len(batch), max(s.largest, len(batch))
            )
        for p in batch:
            p.done.set()


def embedding_batcher(
    model: DermModel, max_batch: int = 16, max_wait_ms: float = 5.0
) -> MicroBatcher[torch.Tensor, torch.Tensor]:
    """A batcher of ``model``'s image tower: items are preprocessed ``(3, H, W)`` tensors (all of
    the model's input size), results their L2-normalised ``(D,)`` embeddings."""
    import torch

    def encode(items: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(model.encode_images(torch.stack(items)).unbind(0))

    return MicroBatcher(encode, max_batch=max_batch, max_wait_ms=max_wait_ms)


__all__ = ["BatchStats", "MicroBatcher", "embedding_batcher"]
