"""Micro-batching of the server: batched embeddings equal one-by-one ones, batches really form
under concurrency and respect ``max_batch``, a failing batch fails each of its callers (and only
them), and ``close`` finishes queued work and stops the worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import dermfm
from dermfm.io import load_image
from dermfm.server.batching import MicroBatcher, embedding_batcher


@pytest.fixture(scope="module")
def model() -> dermfm.DermModel:
    return dermfm.load_model()


def run_together(n: int, call: Callable[[int], object]) -> list[object]:
    """``call(i)`` for ``i < n`` from ``n`` threads released at once; results (or the raised
    exceptions) in order of ``i``."""
    start = threading.Barrier(n)

    def one(i: int) -> object:
        start.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_embeddings_equal_one_by_one_and_batches_form(
    model: dermfm.DermModel, real_images: list[tuple[Path, str]]
) -> None:
    pixels = [model.preprocess(load_image(path)) for path, _ in real_images[:16]]
    expected = [model.encode_images(x[None])[0] for x in pixels]
    with embedding_batcher(model, max_batch=16, max_wait_ms=50.0) as batcher:
        got = run_together(16, lambda i: batcher.submit(pixels[i]))
        stats = batcher.stats
    for i, vector in enumerate(got):
        assert isinstance(vector, torch.Tensor), vector
        assert vector.shape == (model.embed_dim,)
        torch.testing.assert_close(vector, expected[i], atol=1e-5, rtol=0)
    assert stats.items == 16
    assert stats.largest > 1 and stats.batches < 16
    assert stats.mean_batch_size == pytest.approx(16 / stats.batches)


@pytest.mark.parametrize("max_batch", [1, 4])
def test_max_batch_is_respected_and_each_caller_gets_its_own_result(max_batch: int) -> None:
    sizes: list[int] = []

    def square(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)  # callers pile up while a batch runs
        return [x * x for x in items]

    with MicroBatcher(square, max_batch=max_batch, max_wait_ms=20.0) as batcher:
        got = run_together(24, lambda i: batcher.submit(i))
    assert got == [i * i for i in range(24)]
    assert sum(sizes) == 24 and max(sizes) == max_batch
    assert batcher.stats.batches == len(sizes) and batcher.stats.largest == max_batch


def test_an_exception_reaches_every_caller_of_its_batch_and_the_batcher_goes_on() -> None:
    def checked(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("item 'bad' cannot be processed")
        return [s.upper() for s in items]

    # four callers at once, a long wait: all four land in one batch
    with MicroBatcher(checked, max_batch=4, max_wait_ms=5000.0) as batcher:
        got = run_together(4, lambda i: batcher.submit(["a", "bad", "c", "d"][i]))
        assert batcher.stats.batches == 1
        for outcome in got:
            assert isinstance(outcome, ValueError)
            assert "item 'bad'" in str(outcome)
        after = run_together(4, lambda i: batcher.submit("wxyz"[i]))
        assert after == ["W", "X", "Y", "Z"]
        assert batcher.running


def test_a_wrong_number_of_results_is_an_error_for_the_callers() -> None:
    with MicroBatcher(lambda items: items[:-1], max_batch=2, max_wait_ms=5000.0) as batcher:
        got = run_together(2, lambda i: batcher.submit(i))
    for outcome in got:
        assert isinstance(outcome, ValueError)
        assert "returned 1 results for 2 items" in str(outcome)


def test_close_finishes_queued_items_promptly_then_refuses_new_ones() -> None:
    gate, started = threading.Event(), threading.Event()

    def held(items: list[int]) -> list[int]:
        started.set()
        gate.wait(5)
        return [x + 1 for x in items]

    batcher = MicroBatcher(held, max_batch=2, max_wait_ms=10_000.0)
    with ThreadPoolExecutor(4) as pool:
        full = [pool.submit(batcher.submit, i) for i in (1, 2)]
        assert started.wait(5)  # the worker is busy with a full batch ...
        queued = pool.submit(batcher.submit, 3)
        deadline = time.monotonic() + 5
        while batcher.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert batcher.waiting == 1  # ... so the third item waits in the queue
        closing = pool.submit(batcher.close)
        gate.set()
        begun = time.monotonic()
        closing.result(timeout=5)
        # the queued item ran at once: closing does not wait out max_wait_ms
        assert time.monotonic() - begun < 2
        assert [f.result(timeout=1) for f in full] == [2, 3]
        assert queued.result(timeout=1) == 4
    assert not batcher.running
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(4)
    batcher.close()  # idempotent
    assert batcher.stats.items == 3 and batcher.stats.batches == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(list, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(list, max_wait_ms=-1)
