"""Fault detection over many stations at once: robust z-scores, EWMA control charts, 2-means
(scikit-learn k-means), robust Mahalanobis outliers (scikit-learn MinCovDet). Vectorised
over arrays already ordered by series and time, so the same code serves ten scans or ten
million (no Python loop over scans).

A *series* is one station's scans of one comparable group (modality + body part + protocol
family), in acquisition order. Baselines come from the whole fleet's scans of the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scikit-learn is imported when used: it costs seconds of start-up
    from sklearn.cluster import KMeans
    from sklearn.covariance import MinCovDet

# EWMA chart on robust z-scores (z = (x - fleet median) / (1.4826 MAD)).
EWMA_LAMBDA = 0.2
EWMA_L = 3.0  # control limit in asymptotic EWMA standard deviations
# A single wild scan must not raise a station alert on its own (that is an outlier's job):
# z is clipped so that one scan moves the EWMA by at most LAMBDA * Z_CLIP < the limit.
Z_CLIP = 3.0
MIN_SERIES_SCANS = 5  # fewer scans than this: no verdict on the station for that group
ALERT_WINDOW = 20  # the "last N scans" an alert message summarises
# An alert also needs the scans since the change to sit this far (robust SDs of single
# scans) from the baseline on average: a chart that crossed its limit by a hair on the
# last scan is not worth a fleet manager's time.
MIN_ALERT_SCORE = 1.5


def ewma_limit(lam: float = EWMA_LAMBDA, width: float = EWMA_L) -> float:
    """Asymptotic control limit of an EWMA of unit-variance z-scores."""
    return width * float(np.sqrt(lam / (2.0 - lam)))


def ewma(z: np.ndarray, lam: float = EWMA_LAMBDA, chunk: int = 64) -> np.ndarray:
    """EWMA along axis 0 of ``z`` (n x m) from 0: e[t] = (1-lam) e[t-1] + lam z[t].

    Vectorised without a Python loop over rows (and without importing scipy.signal, which
    alone costs seconds of start-up): rows are cut into chunks of 64, each chunk's EWMA
    from 0 is a scaled cumulative sum, and the carry between chunks decays by
    (1-lam)^64 (< 1e-6 for lam=0.2), so three chunks back reach float64 precision.
    """
    n, m = z.shape
    if n == 0:
        return np.zeros_like(z, dtype=np.float64)
    q = 1.0 - lam
    chunks = -(-n // chunk)
    padded = np.zeros((chunks * chunk, m))
    padded[:n] = z
    blocks = padded.reshape(chunks, chunk, m)
    powers = q ** np.arange(chunk, dtype=np.float64)  # q^0 .. q^(chunk-1), all > 1e-7
    # local[t] = lam * sum_{k<=t} q^(t-k) z[k] = lam * q^t * cumsum(z[k] / q^k)
    local = lam * powers[None, :, None] * np.cumsum(blocks / powers[None, :, None], axis=1)
    ends = local[:, -1, :]  # each chunk's EWMA at its last row, from 0
    step = q**chunk
    carry = np.zeros_like(ends)  # the full EWMA at the end of the previous chunk
    term = np.zeros_like(ends)
    term[1:] = ends[:-1]
    factor = 1.0
    for back in range(1, 4):  # carry_k = sum_j step^(j-1) ends[k-j]
        carry += factor * term
        factor *= step
        term = np.concatenate([np.zeros((1, m)), term[:-1]])
    full = local + (q * powers)[None, :, None] * carry[:, None, :]
    return full.reshape(chunks * chunk, m)[:n]


def segmented_ewma(z: np.ndarray, starts: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """EWMA along axis 0 of ``z`` (n x m), restarting at 0 at every index in ``starts``.

    One pass over the concatenation of all series, then the carry-over from the previous
    series (which decays as (1-lam)^k) is subtracted: vectorised over series.
    """
    n, m = z.shape
    out = np.empty((n, m))
    if n == 0:
        return out
    seg = np.searchsorted(starts, np.arange(n), side="right") - 1
    start_of = starts[seg]
    del seg
    carry_index = np.maximum(start_of - 1, 0)
    has_carry = start_of > 0
    decay = np.power(1.0 - lam, (np.arange(n) - start_of + 1).astype(np.float64))
    decay[~has_carry] = 0.0
    del start_of, has_carry
    for col in range(m):  # one metric at a time keeps the temporaries to a few columns
        raw = ewma(z[:, col : col + 1], lam)[:, 0]
        out[:, col] = raw - decay * raw[carry_index]
    return out


@dataclass
class SeriesAlert:
    series: int  # index into the series table
    metric: int  # column index
    direction: int  # +1 above baseline, -1 below
    detected_at: int  # 0-based position in the series where the final out-of-control run began
    change_start: int  # estimated start of the shift (last return of the EWMA to target before)
    window_start: int  # first position summarised in the message (at most ALERT_WINDOW back)
    length: int  # scans in the series
    limit: float  # the control limit used (in z units)


def group_scale(spread: np.ndarray, lengths: np.ndarray, series_group: np.ndarray) -> np.ndarray:
    """Scale of the control limits per series and metric: the typical station's spread.

    ``spread`` (series x metric) is each series' scan-to-scan SD of its clipped robust z.
    Real metrics are not normal (the soft-tissue mode jumps between anatomies), so z may
    vary by more than 1 from scan to scan; the limits are widened by the median over the
    group's stations of that SD. A faulty station's offset does not enter (its own mean is
    removed) and one faulty station cannot move the median.
    """
    out = np.ones_like(spread)
    usable = (lengths >= MIN_SERIES_SCANS)[:, None] & np.isfinite(spread)
    for group in np.unique(series_group):
        members = series_group == group
        for col in range(spread.shape[1]):
            values = spread[members & usable[:, col], col]
            if values.size:
                out[members, col] = np.median(values)
    return np.clip(out, 0.5, None)


def find_alerts(ewma: np.ndarray, starts: np.ndarray, lengths: np.ndarray, scale: np.ndarray | None = None) -> list[SeriesAlert]:
    """Series and metrics whose EWMA is out of control at their latest scan.

    ``scale`` (series x metric, default 1) widens the limit for metrics whose z varies by
    more than 1 from scan to scan (see :func:`group_scale`). For each alert, find
    where the final out-of-control run began (the detection) and where the EWMA last sat
    on the target side before it (the estimated start of the change).
    """
    limits = ewma_limit() * (np.ones((len(starts), ewma.shape[1])) if scale is None else scale)
    ends = starts + lengths - 1
    last = ewma[ends]  # (series, metric)
    hits = np.argwhere((np.abs(last) > limits) & (lengths[:, None] >= MIN_SERIES_SCANS))
    alerts: list[SeriesAlert] = []
    for s, m in hits:
        s, m = int(s), int(m)
        limit = limits[s, m]
        path = ewma[starts[s] : ends[s] + 1, m]
        direction = 1 if path[-1] > 0 else -1
        signed = path * direction
        out = signed > limit
        inside = np.nonzero(~out)[0]
        detected = int(inside[-1] + 1) if inside.size else 0
        on_target = np.nonzero(signed[:detected] <= 0)[0]
        change = int(on_target[-1] + 1) if on_target.size else 0
        window_start = max(change, int(lengths[s]) - ALERT_WINDOW)
        alerts.append(SeriesAlert(s, m, direction, detected, change, window_start, int(lengths[s]), float(limit)))
    return alerts


def robust_z(values: np.ndarray, median: np.ndarray, robust_sd: np.ndarray) -> np.ndarray:
    """(x - median) / robust SD, with NaN (feature absent) as 0: no evidence either way."""
    z = (values - median) / robust_sd
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


# scikit-learn's FastMCD switches to a far slower regime (subsets and merges, ~10x the
# time) above 500 rows; a seeded sample of 500 comparable scans gives a stable 5-metric
# covariance, and the fitted model then scores every scan.
MCD_MAX_ROWS = 500


def _one_thread():
    """Run scikit-learn's OpenMP/BLAS code on one thread. These fits take milliseconds on
    one core; OpenMP's threads starting and spin-waiting beside DuckDB cost twenty times
    that in CPU time (measured: 0.69 s against 0.036 s for the 2-means)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_two_means(points: np.ndarray, seed: int = 0, restarts: int = 4) -> KMeans | None:
    """The prototype's view: scikit-learn's k-means (k=2, best of ``restarts``) on
    standardised points. Fit it on a sample; label every scan with :func:`two_means_labels`
    (labels do not depend on how the scans are batched). None with fewer than two points."""
    from sklearn.cluster import KMeans

    if len(points) < 2:
        return None
    with _one_thread():
        return KMeans(n_clusters=2, n_init=restarts, random_state=seed).fit(points)


def two_means_labels(model: KMeans | None, points: np.ndarray) -> np.ndarray:
    """The k-means cluster (0 or 1) of each point; all 0 when there was nothing to fit."""
    if model is None or len(points) == 0:
        return np.zeros(len(points), dtype=np.int64)
    with _one_thread():
        return model.predict(points)


@dataclass
class RobustCovariance:
    """scikit-learn's Minimum Covariance Determinant fit on the usable columns."""

    keep: np.ndarray  # which columns were usable (not constant)
    model: MinCovDet

    def distance(self, z: np.ndarray) -> np.ndarray:
        """Robust Mahalanobis distance (not squared) of each row of ``z``."""
        return np.sqrt(np.maximum(self.model.mahalanobis(z[:, self.keep]), 0.0))


def fit_robust_covariance(z: np.ndarray, max_rows: int = MCD_MAX_ROWS, seed: int = 0) -> RobustCovariance | None:
    """Minimum Covariance Determinant estimate (``sklearn.covariance.MinCovDet``, with its
    reweighting and consistency correction) of robust z-scores (n x p).

    Fitted on a seeded random sample of at most ``max_rows`` rows (see
    :data:`MCD_MAX_ROWS`); pass rows in a deterministic order for a reproducible report.
    None when there are too few rows or no varying column.
    """
    import warnings

    from sklearn.covariance import MinCovDet

    n, p = z.shape
    if n < max(10, 2 * p + 2):
        return None
    if n > max_rows:
        z = z[np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))]
    keep = z.std(axis=0) > 1e-9  # constant columns make the covariance singular
    if not keep.any():
        return None
    with warnings.catch_warnings():
        # Many scans may share a value (an absent feature scores 0): the support's
        # covariance can then be rank-deficient, which MinCovDet handles with a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        with _one_thread():
            model = MinCovDet(random_state=seed).fit(z[:, keep])
    return RobustCovariance(keep, model)
