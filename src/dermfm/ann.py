"""Nearest-neighbour indexes at scale: choose a FAISS index for a collection's size and a memory
budget, train it on a sample, tune its search parameter for a recall target, and measure
recall@10 against exact search on held-aside queries.

Indexes are FAISS index-factory strings (``Flat``, ``IVF4096,Flat``, ``OPQ64,IVF4096,PQ64``) and
search parameters are set through ``faiss.ParameterSpace``, so any factory string FAISS accepts
can be given instead of the automatic choice. The automatic choice follows autofaiss's rule
(exact search while it is small and fits, then an inverted file over the raw vectors while they
fit, then compressed IVF-PQ codes with an OPQ rotation sized to the budget). An HNSW graph is
the alternative to the inverted file (``kind="hnsw"``); on 1 M clustered vectors the inverted
file reached recall@10 1.0 at 1 ms per query where HNSW32 stayed under 0.95 (docs/scale.md).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: ``--kind`` values: ``auto`` chooses from the size and the memory budget.
KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
#: Recall@10 the search parameter is tuned to reach (the smallest setting that reaches it).
TARGET_RECALL = 0.95
#: Added to the target while tuning: the held-aside queries are a sample (1,000 give a standard
#: error near 0.005) and new queries can be harder than stored rows.
TUNING_MARGIN = 0.02
#: Largest collection searched exactly when ``auto`` (single-query latency grows with ``n``).
EXACT_UP_TO = 100_000
HNSW_M = 32
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """Bytes of a budget such as ``2GB``, ``512MiB`` or ``1.5gb``."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in _UNITS:
        raise ValueError(f"memory budget {text!r} is not a size such as 2GB, 512MB or 1.5GiB")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


@dataclass(frozen=True)
class IndexPlan:
    """An index to build: its factory string, kind, estimated memory and why it was chosen."""

    factory: str
    kind: str
    memory_bytes: int
    reason: str


def _ivf_lists(n: int) -> int:
    """IVF list count: the power of two nearest ``4 sqrt(n)``, with at least 39 training
    vectors per list (FAISS's minimum for k-means)."""
    want = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    return int(max(1, min(want, 65536, n // 39 or 1)))


def estimate_bytes(kind: str, n: int, dim: int, pq_bytes: int = 0) -> int:
    """Approximate resident bytes of an index of ``n`` ``dim``-d vectors."""
    if kind == "flat":
        return n * dim * 4
    if kind == "ivf":
        return n * (dim * 4 + 8) + _ivf_lists(n) * dim * 4
    if kind == "hnsw":
        return int(n * (dim * 4 + HNSW_M * 2 * 4 * 1.1))
    nlist = _ivf_lists(n)
    return n * (pq_bytes + 8) + nlist * dim * 4 + dim * dim * 4


def factory_kind(factory: str) -> str:
    """The kind (flat, ivf, hnsw, ivfpq) of a FAISS index-factory string, for its tuning."""
    if "IVF" in factory:
        return "ivfpq" if "PQ" in factory.split("IVF", 1)[1] else "ivf"
    return "hnsw" if "HNSW" in factory else "flat"


def plan_index(n: int, dim: int, kind: str = "auto", memory: int | None = None) -> IndexPlan:
    """The index for ``n`` vectors of dimension ``dim`` within ``memory`` bytes (``None``: no
    budget). ``kind`` forces flat, ivf, hnsw or ivfpq; ``auto`` takes the first that fits of
    exact (up to :data:`EXACT_UP_TO` vectors), an inverted file over the raw vectors (IVF-Flat),
    then IVF-PQ with the most PQ bytes that fit."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")
    budget = memory if memory is not None else math.inf
    flat, ivf = estimate_bytes("flat", n, dim), estimate_bytes("ivf", n, dim)
    nlist = _ivf_lists(n)
    if kind == "flat" or (kind == "auto" and n <= EXACT_UP_TO and flat <= budget):
        return IndexPlan("Flat", "flat", flat, "exact search: small enough to scan")
    if kind == "ivf" or (kind == "auto" and ivf <= budget):
        return IndexPlan(
            f"IVF{nlist},Flat", "ivf", ivf, "inverted file: the raw vectors fit in the budget"
        )
    if kind == "hnsw":
        return IndexPlan(
            f"HNSW{HNSW_M},Flat", "hnsw", estimate_bytes("hnsw", n, dim), "HNSW graph (asked for)"
        )
    choices = [m for m in (64, 48, 32, 24, 16, 8, 4) if m <= dim // 2 and dim % m == 0]
    fitting = [m for m in choices if estimate_bytes("ivfpq", n, dim, m) <= budget]
    m = fitting[0] if fitting else choices[-1]
    why = (
        f"IVF-PQ with OPQ: {m} bytes per vector fit the budget"
        if fitting
        else f"IVF-PQ with OPQ at its smallest ({m} bytes per vector): over the budget"
    )
    return IndexPlan(f"OPQ{m},IVF{nlist},PQ{m}", "ivfpq", estimate_bytes("ivfpq", n, dim, m), why)


@dataclass
class BuildReport:
    """What an index build did and how well the index searches.

    Attributes:
        factory, kind: the FAISS index built.
        vectors: vectors indexed; trained_on: training sample size (0: no training needed).
        queries: the last vectors, searched (before being added) to measure recall.
        parameter, value: the tuned search parameter (``efSearch``, ``nprobe``), if any.
        recall_at_10: mean fraction of a query's exact 10 nearest indexed vectors (inner
            product) that the index returns.
        seconds: build time (training + adding + tuning); index_bytes: size on disk (set by
            the caller that writes it).
    """

    factory: str
    kind: str
    vectors: int
    trained_on: int
    queries: int
    parameter: str | None
    value: int | None
    recall_at_10: float
    seconds: float
    index_bytes: int
    #: Parts the index is split into (see :func:`combine_reports`).
    shards: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return asdict(self)


def combine_reports(reports: list[BuildReport]) -> BuildReport:
    """The report of an index built as several parts (shards) searched together.

    Each part's recall@10 is measured on its own held-aside queries against exact search
    within the part. A merged search returns, for each part, its top 10 and keeps the best 10
    by score, so a global nearest neighbour is found exactly when its part's search finds it:
    the combined recall@10 is, in expectation, the parts' recall weighted by their share of the
    neighbours, estimated here by the query-weighted mean. The tuned value is the largest of
    the parts' (each part keeps its own, listed in the index metadata).
    """
    first = reports[0]
    queries = sum(r.queries for r in reports)
    values = [r.value for r in reports if r.value is not None]
    return BuildReport(
        factory=first.factory,
        kind=first.kind,
        vectors=sum(r.vectors for r in reports),
        trained_on=sum(r.trained_on for r in reports),
        queries=queries,
        parameter=first.parameter,
        value=max(values) if values else None,
        recall_at_10=round(sum(r.recall_at_10 * r.queries for r in reports) / max(queries, 1), 4),
        seconds=round(sum(r.seconds for r in reports), 3),
        index_bytes=sum(r.index_bytes for r in reports),
        shards=len(reports),
    )


def row_range(batches: Iterator[np.ndarray], start: int, stop: int) -> Iterator[np.ndarray]:
    """The rows ``start:stop`` of a stream of row batches, as batches (stops reading at
    ``stop``)."""
    offset = 0
    for batch in batches:
        lo, hi = max(start - offset, 0), min(stop - offset, len(batch))
        if lo < hi:
            yield batch[lo:hi]
        offset += len(batch)
        if offset >= stop:
            return


def open_shards(parts: list[tuple[Any, str | None, int | None]]) -> Any:
    """One searchable index over opened parts ``(index, parameter, value)`` holding
    consecutive rows: FAISS's ``IndexShards`` searches them in parallel threads and merges
    the top-k lists by score, offsetting each part's row numbers by the rows before it.
    The parts must stay referenced by the caller (``IndexShards`` does not own them)."""
    import faiss

    combined = faiss.IndexShards(parts[0][0].d, True, True)  # threaded, successive ids
    for index, parameter, value in parts:
        set_parameter(index, parameter, value)
        combined.add_shard(index)
    return combined


def recall_at(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's exact top ``k`` present in its found top ``k``."""
    hits = []
    for f, e in zip(found, exact, strict=True):
        f_ids = [x for x in f.tolist() if x != -1][:k]
        e_ids = [x for x in e.tolist() if x != -1][:k]
        hits.append(len(set(f_ids) & set(e_ids)) / max(len(e_ids), 1))
    return float(np.mean(hits)) if hits else 1.0


def _parameter(kind: str) -> tuple[str | None, list[int]]:
    if kind == "hnsw":
        return "efSearch", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    if kind in ("ivf", "ivfpq"):
        return "nprobe", [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024]
    return None, []


def read_mapped(path: str, factory: str) -> Any:
    """Open a written index read-only with its bulk data memory-mapped, not read: the inverted
    lists of an IVF index (``IO_FLAG_MMAP``), the stored codes of the others, e.g. the vectors
    of ``Flat`` or under an HNSW graph (``IO_FLAG_MMAP_IFC``; FAISS refuses both flags on an
    IVF index). Processes opening the same file share its pages; the graph itself is read."""
    import faiss

    mapping = faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index(path, mapping | faiss.IO_FLAG_READ_ONLY)


def set_parameter(index: Any, parameter: str | None, value: int | None) -> None:
    """Set a search parameter (``efSearch``, ``nprobe``) through FAISS's ParameterSpace."""
    import faiss

    if parameter and value is not None:
        faiss.ParameterSpace().set_index_parameter(index, parameter, value)


def _skip_polysemous_training(index: Any) -> None:
    """Turn off the polysemous code reordering that FAISS's index factory enables for
    ``IVFk,PQm`` (unless written ``PQmnp``). It only serves polysemous search (a Hamming
    pre-filter dermfm never enables), yet its simulated annealing is a fixed cost per
    sub-quantizer, whatever the data size: about 19 of the 20 CPU seconds of training
    ``IVF32,PQ8`` on 4,000 vectors."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.do_polysemous_training = False


def build(
    batches: Callable[[], Iterator[np.ndarray]],
    n: int,
    dim: int,
    plan: IndexPlan,
    *,
    train_size: int | None = None,
    queries: int = 1000,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> tuple[Any, BuildReport]:
    """Build the index of ``plan`` over the ``n`` vectors that ``batches()`` yields (called
    twice: a sampling pass and an adding pass, so the vectors need not fit in memory).

    Training uses a random sample (``train_size``, default 50 vectors per IVF list, at least
    10,000). The last ``queries`` vectors (at most half) are the queries: they are added only
    after tuning, so, like a new image, they are not in the index when searched (a graph holding
    a query's own node leads straight to its neighbours: on 100,000 clustered vectors HNSW's
    recall on indexed vectors was 0.95 where unseen ones got 0.78). Their exact top 10 among the
    others comes from streaming exact search during the adding pass; the search parameter is set
    to the smallest value reaching ``target_recall`` plus :data:`TUNING_MARGIN` (else the best
    measured) and recall@10 reported.
    """
    import faiss

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    _skip_polysemous_training(index)
    needs_training = not index.is_trained
    if train_size is None:
        train_size = max(10_000, 50 * _ivf_lists(n)) if needs_training else 0
    train_size = min(train_size, n)
    indexed = n - min(queries, n // 2)
    pool = indexed if train_size <= indexed else n
    train_rows = np.sort(rng.permutation(pool)[:train_size]) if needs_training else []
    wanted = np.zeros(n, bool)
    wanted[train_rows] = True
    sample, query = [], []
    offset = 0
    for batch in batches():
        sample.append(batch[wanted[offset : offset + len(batch)]])
        query.append(batch[max(indexed - offset, 0) :])
        offset += len(batch)
    if offset != n:
        raise ValueError(f"the vectors changed while indexing: {offset} read, {n} expected")
    q = np.ascontiguousarray(np.concatenate(query), dtype=np.float32)
    if needs_training:
        index.train(np.ascontiguousarray(np.concatenate(sample)))
    del sample
    heap = faiss.ResultHeap(len(q), 10, keep_max=True) if len(q) else None
    offset = 0
    for batch in batches():  # the rows before ``indexed``; the queries are added after tuning
        batch = np.ascontiguousarray(batch[: max(indexed - offset, 0)], dtype=np.float32)
        if not len(batch):
            break
        index.add(batch)
        if heap is not None:
            scores = q @ batch.T
            top = min(10, batch.shape[0])
            best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            heap.add_result(
                np.take_along_axis(scores, best, 1).astype("f4"), (best + offset).astype("i8")
            )
        offset += len(batch)
    recall, parameter, value = 1.0, None, None
    if heap is not None:
        heap.finalize()
        exact = heap.I
        parameter, values = _parameter(plan.kind)
        if parameter is None:
            recall = recall_at(index.search(q, 10)[1], exact)
        else:
            best_recall = -1.0
            for v in values:
                if parameter == "nprobe" and v > getattr(
                    faiss.extract_index_ivf(index), "nlist", v
                ):
                    break
                set_parameter(index, parameter, v)
                measured = recall_at(index.search(q, 10)[1], exact)
                if measured > best_recall + 1e-9:
                    best_recall, value = measured, v
                if measured >= min(target_recall + TUNING_MARGIN, 1.0):
                    value = v
                    best_recall = measured
                    break
            set_parameter(index, parameter, value)
            recall = best_recall
        index.add(q)
    seconds = time.perf_counter() - start
    report = BuildReport(
        factory=plan.factory,
        kind=plan.kind,
        vectors=n,
        trained_on=len(train_rows) if needs_training else 0,
        queries=len(q),
        parameter=parameter,
        value=value,
        recall_at_10=round(recall, 4),
        seconds=round(seconds, 3),
        index_bytes=0,
    )
    return index, report
