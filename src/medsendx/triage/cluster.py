"""Exact (globally optimal) 1-D k-means on a weighted histogram of intensities.

Pixel intensities are one-dimensional, and 1-D k-means is solvable exactly: in an optimal
clustering every cluster is a run of consecutive sorted values, so the best split of the
sorted distinct values into k runs is found by dynamic programming (Wang & Song 2011,
"Ckmeans.1d.dp"). Working on the histogram of distinct values (value, count) instead of on
the pixels makes the cost depend on the number of distinct intensities (a few thousand for a
CT slice) rather than on the number of pixels (262 144 for 512 x 512).

The DP layer ``D[q][i] = min_j D[q-1][j-1] + SSE(j..i)`` has monotone optimal split points
(``opt(i) <= opt(i+1)``), so each layer is solved by divide and conquer in O(n log n). The
divide-and-conquer recursion is run breadth-first, one numpy pass per recursion level, so
the Python overhead is O(log n) calls per layer, not O(n).

The result is deterministic (ties go to the smallest split point) and its within-cluster
sum of squares is never larger than that of any other k-partition, e.g. scikit-learn's.

With the compiled code (``_native``), ``kmeans_dp`` in _ckmeans.c does the whole DP in one
call, with the same floating-point operations in the same order as the numpy code here, so
both give bit-identical results. For a frame of stored integer pixels the segmenter goes
further and does histogram, DP and labels in one compiled call (``segmenter``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsendx.triage import _native

# Integer data spanning more values than this is histogrammed by sorting instead of
# counting (the counting array would not fit comfortably in memory).
MAX_COUNTING_BINS = 1 << 24


@dataclass(frozen=True)
class Clustering:
    """An optimal k-partition of a weighted set of 1-D values.

    ``centres`` ascend; cluster ``c`` holds the distinct values ``lows[c] .. highs[c]``
    (inclusive). ``weights`` are the pixel counts per cluster.
    """

    centres: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    weights: np.ndarray
    sse: float

    @property
    def k(self) -> int:
        return int(self.centres.size)

    def boundaries(self) -> np.ndarray:
        """Decision boundaries between neighbouring clusters (midway between the last value
        of one cluster and the first of the next), ``k - 1`` values."""
        return (self.highs[:-1] + self.lows[1:]) / 2.0

    def assign(self, values: np.ndarray) -> np.ndarray:
        """Cluster index (0 .. k-1, int8) of each value, same shape as ``values``: the
        number of decision boundaries below it, so values seen during fitting get exactly
        their cluster."""
        values = np.asarray(values)
        bounds = np.ascontiguousarray(self.boundaries(), dtype=np.float64)
        lib = _native.load()
        if lib is not None and values.dtype == np.int32 and values.flags.c_contiguous:
            out = np.empty(values.shape, dtype=np.int8)
            lib.assign_i32(values.ctypes.data, values.size, bounds.ctypes.data, bounds.size, out.ctypes.data)
            return out
        out = np.zeros(values.shape, dtype=np.int8)
        for boundary in bounds:  # one comparison pass per boundary beats searchsorted
            out += values > boundary
        return out


def intensity_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (ascending, float64) and how often each occurs.

    Integer-valued data (CT in HU, most stored pixel data) takes one counting pass over
    the pixels; other data falls back to sorting (``np.unique``), which is exact but slower.
    """
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        return np.empty(0), np.empty(0)
    if flat.dtype.kind not in "iub":
        ints = flat.astype(np.int64)
        if not np.array_equal(ints, flat):
            return _sorted_histogram(flat)
        flat = ints
    low, high = int(flat.min()), int(flat.max())
    if high - low >= MAX_COUNTING_BINS:
        return _sorted_histogram(flat)
    lib = _native.load()
    counts = np.zeros(high - low + 1, dtype=np.int64)
    if not (
        lib is not None
        and flat.dtype == np.int32
        and lib.histogram_i32(flat.ctypes.data, flat.size, low, counts.size, counts.ctypes.data) == 0
    ):
        counts = np.bincount(flat.astype(np.intp, copy=False) - low)
    present = np.flatnonzero(counts)
    return (present + low).astype(np.float64), counts[present].astype(np.float64)


def _sorted_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distinct, counts = np.unique(values, return_counts=True)
    return distinct.astype(np.float64), counts.astype(np.float64)


def kmeans_1d(values: np.ndarray, weights: np.ndarray | None = None, k: int = 3) -> Clustering:
    """Globally optimal k-means of 1-D ``values`` (optionally weighted, e.g. a histogram).

    ``values`` need not be sorted or distinct. With fewer distinct values than ``k`` the
    result has one cluster per distinct value. Raises ``ValueError`` on empty input.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.ascontiguousarray(weights, dtype=np.float64).ravel()
    if x.size == 0 or w.sum() <= 0:
        raise ValueError("no values to cluster")
    if x.size != w.size:
        raise ValueError("values and weights differ in length")
    if not np.all(w > 0):
        keep = w > 0
        x, w = x[keep], w[keep]
    if x.size > 1 and np.any(np.diff(x) <= 0):
        x, inverse = np.unique(x, return_inverse=True)
        w = np.bincount(inverse.ravel(), weights=w)
    return optimal_partition(x, w, min(k, x.size))


def optimal_partition(x: np.ndarray, w: np.ndarray, k: int) -> Clustering:
    """:func:`kmeans_1d` without its input checks, for callers whose input is already
    valid: ``x`` strictly ascending float64, ``w`` positive float64 of the same length,
    both contiguous, and ``1 <= k <= x.size``."""
    n = x.size
    lib = _native.load()
    if lib is not None:  # the same arithmetic, compiled (see _ckmeans.c)
        starts = np.empty(k, dtype=np.int64)
        stats = np.empty(2 * k + 1)
        if lib.kmeans_dp(x.ctypes.data, w.ctypes.data, n, k, starts.ctypes.data, stats.ctypes.data):
            raise MemoryError("no memory for the clustering tables")
    else:
        starts, stats = _kmeans_dp_numpy(x, w, k)
    return clustering_from(x, starts, stats)


def clustering_from(x: np.ndarray, starts: np.ndarray, stats: np.ndarray) -> Clustering:
    """A :class:`Clustering` from the DP's output: the first index of each cluster in
    ``x`` and ``stats`` = centres (k), weights (k), SSE."""
    k = starts.size
    ends = np.append(starts[1:] - 1, x.size - 1)
    return Clustering(
        centres=stats[:k].copy(),
        lows=x[starts],
        highs=x[ends],
        weights=stats[k : 2 * k].copy(),
        sse=max(float(stats[2 * k]), 0.0),
    )


def _kmeans_dp_numpy(x: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster starts and stats (centres, weights, SSE) in numpy: the twin of
    ``kmeans_dp`` in _ckmeans.c, the same operations in the same order (sums sequential,
    hence cumsum rather than sum, whose pairwise order C would not reproduce)."""
    n = x.size
    # Prefix sums of weight, weighted value and weighted square, on values centred at the
    # weighted mean so that the squares stay small and the SSE differences stay accurate.
    mean = float(np.cumsum(w * x)[-1] / np.cumsum(w)[-1])
    xc = x - mean
    W = np.concatenate(([0.0], np.cumsum(w)))
    S = np.concatenate(([0.0], np.cumsum(w * xc)))
    Q = np.concatenate(([0.0], np.cumsum(w * xc * xc)))

    # Layer 1: one cluster holding values 0..i.
    prev = Q[1:] - S[1:] ** 2 / W[1:]
    splits: list[np.ndarray] = []
    for q in range(2, k + 1):
        if q < k:
            cur, arg = _dp_layer(prev, W, S, Q, q)
        else:  # the last layer is needed only for i = n - 1
            cur, arg = _dp_last(prev, W, S, Q, q)
        splits.append(arg)
        prev = cur

    # Backtrack: the first index of each cluster.
    starts = np.zeros(k, dtype=np.int64)
    end = n - 1
    for q in range(k, 1, -1):
        arg = splits[q - 2]
        start = int(arg[end]) if arg.size == n else int(arg[0])
        starts[q - 1] = start
        end = start - 1
    stops = np.append(starts[1:], n)  # one past the last index of each cluster
    cw = W[stops] - W[starts]
    cs = S[stops] - S[starts]
    parts = Q[stops] - Q[starts] - cs * cs / cw
    return starts, np.concatenate((cs / cw + mean, cw, np.cumsum(parts)[-1:]))


def _dp_last(prev: np.ndarray, W: np.ndarray, S: np.ndarray, Q: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    n = prev.size
    j = np.arange(q - 1, n)  # first index of the last cluster
    ds = S[n] - S[j]
    cost = prev[j - 1] + (Q[n] - Q[j]) - ds * ds / (W[n] - W[j])
    best = int(np.argmin(cost))
    return np.array([cost[best]]), np.array([j[best]])


def _dp_layer(prev: np.ndarray, W: np.ndarray, S: np.ndarray, Q: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """``cur[i] = min_{q-1 <= j <= i} prev[j-1] + SSE(j..i)`` for every i >= q-1, with the
    argmin, by breadth-first divide and conquer over the monotone argmin."""
    n = prev.size
    cur = np.full(n, np.inf)
    arg = np.zeros(n, dtype=np.int64)
    # A[j] = prev[j-1] - Q[j]; the row constant Q[i+1] is added at the end.
    A = np.full(n, np.inf)
    A[q - 1 :] = prev[q - 2 : n - 1] - Q[q - 1 : n]
    ilo = np.array([q - 1])
    ihi = np.array([n - 1])
    jlo = np.array([q - 1])
    jhi = np.array([n - 1])
    while ilo.size:
        mid = (ilo + ihi) >> 1
        hi = np.minimum(jhi, mid)
        lengths = hi - jlo + 1
        ends = np.cumsum(lengths)
        starts = ends - lengths
        total = int(ends[-1])
        j = np.arange(total) - np.repeat(starts - jlo, lengths)
        i1 = np.repeat(mid + 1, lengths)
        ds = S[i1] - S[j]
        vals = A[j] - ds * ds / (W[i1] - W[j])
        best = np.minimum.reduceat(vals, starts)
        # first position of the minimum in each segment (deterministic ties)
        pos = np.where(vals == np.repeat(best, lengths), np.arange(total), total)
        first = np.minimum.reduceat(pos, starts)
        jbest = first - starts + jlo
        cur[mid] = best + Q[mid + 1]
        arg[mid] = jbest
        left = mid > ilo
        right = mid < ihi
        ilo, ihi, jlo, jhi = (
            np.concatenate((ilo[left], mid[right] + 1)),
            np.concatenate((mid[left] - 1, ihi[right])),
            np.concatenate((jlo[left], jbest[right])),
            np.concatenate((jbest[left], jhi[right])),
        )
    return cur, arg
