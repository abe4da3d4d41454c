"""Bounds on expensive work: :class:`Gate` lets at most a fixed number of pieces of work run at
once (the rest wait without holding a thread) and, for image work, hands the memory they freed
back to the operating system when the last one finishes.

Decoding an image allocates large blocks; glibc keeps freed blocks in its heaps (one per thread
that used them), so after a burst of uploads a server would otherwise stay at its peak size.
:func:`release_memory` (glibc's ``malloc_trim``) returns them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> bool:
    """Return the free memory of the C heaps to the operating system (glibc ``malloc_trim``);
    ``False`` where the C library has no such call (not glibc)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


class Gate:
    """At most ``slots`` calls of :meth:`run` at once; the others wait their turn.

    Args:
        slots: how many may run at once.
        release: call :func:`release_memory` whenever the last running call finishes.
    """

    def __init__(self, slots: int, *, release: bool = False) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least one slot, got {slots}")
        self.slots = slots
        self.release = release
        self._semaphore = asyncio.Semaphore(slots)
        self._running = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread once a slot is free; its result or exception."""
        async with self._semaphore:
            self._running += 1
            try:
                return await run_in_threadpool(fn, *args)
            finally:
                self._running -= 1
                if self.release and self._running == 0:
                    await run_in_threadpool(release_memory)


__all__ = ["Gate", "release_memory"]
