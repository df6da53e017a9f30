"""Fault detection over many stations at once: robust z-scores, EWMA control charts, 2-means,
robust Mahalanobis outliers. Pure numpy on arrays already ordered by series and time, so the
same code serves ten scans or ten million (no Python loop over scans).

A *series* is one station's scans of one comparable group (modality + body part + protocol
family), in acquisition order. Baselines come from the whole fleet's scans of the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

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


def segmented_ewma(z: np.ndarray, starts: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """EWMA along axis 0 of ``z`` (n x m), restarting at 0 at every index in ``starts``.

    One ``lfilter`` pass over the concatenation of all series, then the carry-over from the
    previous series (which decays as (1-lam)^k) is subtracted: vectorised over series.
    """
    n = z.shape[0]
    if n == 0:
        return np.zeros_like(z)
    raw = lfilter([lam], [1.0, lam - 1.0], z, axis=0)
    seg = np.searchsorted(starts, np.arange(n), side="right") - 1
    start_of = starts[seg]
    carry_index = start_of - 1
    carry = np.where((carry_index >= 0)[:, None], raw[np.maximum(carry_index, 0)], 0.0)
    steps = (np.arange(n) - start_of + 1).astype(np.float64)
    decay = np.power(1.0 - lam, steps)[:, None]
    return raw - decay * carry


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


def within_series_sd(z: np.ndarray, starts: np.ndarray, lengths: np.ndarray, series_group: np.ndarray) -> np.ndarray:
    """Scan-to-scan spread of z for a typical station of each series' group (series x metric).

    Real metrics are not normal (the soft-tissue mode jumps between anatomies), so MAD-based
    z may vary by more than 1 SD from scan to scan: the control limits are scaled by the
    median over the group's stations of each station's own SD. A faulty station's offset
    does not enter (it is removed by its own mean) and one faulty station cannot move the
    median.
    """
    if len(starts) == 0:
        return np.ones((0, z.shape[1]))
    n = np.maximum(lengths, 1)[:, None].astype(np.float64)
    sums = np.add.reduceat(z, starts, axis=0)
    sumsq = np.add.reduceat(np.square(z), starts, axis=0)
    sd = np.sqrt(np.maximum(sumsq / n - np.square(sums / n), 0.0) * n / np.maximum(n - 1, 1))
    out = np.ones_like(sd)
    usable = lengths >= MIN_SERIES_SCANS
    for group in np.unique(series_group):
        members = (series_group == group) & usable
        if members.any():
            out[series_group == group] = np.median(sd[members], axis=0)
    return np.clip(out, 0.5, None)


def find_alerts(ewma: np.ndarray, starts: np.ndarray, lengths: np.ndarray, scale: np.ndarray | None = None) -> list[SeriesAlert]:
    """Series and metrics whose EWMA is out of control at their latest scan.

    ``scale`` (series x metric, default 1) widens the limit for metrics whose z varies by
    more than 1 from scan to scan (see :func:`within_series_sd`). For each alert, find
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


def two_means(points: np.ndarray, seed: int = 0, sample: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """k-means with k=2 (the prototype's view) fitted on a sample, applied to every point.

    Returns (labels for all points, the 2 centres). Clusters are numbered by size, largest
    first, so the output is stable between runs.
    """
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    fit_on = points if len(points) <= sample else points[rng.choice(len(points), sample, replace=False)]
    if len(fit_on) < 2:
        return np.zeros(len(points), dtype=np.int8), np.zeros((2, points.shape[1]))
    model = KMeans(n_clusters=2, n_init=4, random_state=seed).fit(fit_on)
    centres = model.cluster_centers_
    d0 = np.square(points - centres[0]).sum(axis=1)
    d1 = np.square(points - centres[1]).sum(axis=1)
    labels = (d1 < d0).astype(np.int8)
    if (labels == 1).sum() > (labels == 0).sum():
        labels = 1 - labels
        centres = centres[::-1]
    return labels, centres


def robust_mahalanobis(z: np.ndarray, seed: int = 0, sample: int = 3000) -> np.ndarray:
    """Robust Mahalanobis distance of each row of robust z-scores (n x p).

    The covariance is the Minimum Covariance Determinant estimate on a sample, so that the
    outliers being looked for do not inflate the yardstick. Returns distances (not squared).
    """
    from sklearn.covariance import MinCovDet

    n, p = z.shape
    if n < max(10, 2 * p + 2):
        return np.zeros(n)
    rng = np.random.default_rng(seed)
    fit_on = z if n <= sample else z[rng.choice(n, sample, replace=False)]
    keep = fit_on.std(axis=0) > 1e-9  # constant columns make the covariance singular
    if not keep.any():
        return np.zeros(n)
    try:
        mcd = MinCovDet(random_state=seed, support_fraction=0.75).fit(fit_on[:, keep])
        precision = mcd.get_precision()
        centre = mcd.location_
    except (ValueError, np.linalg.LinAlgError):
        return np.zeros(n)
    diff = z[:, keep] - centre
    d2 = np.einsum("ij,jk,ik->i", diff, precision, diff)
    return np.sqrt(np.maximum(d2, 0.0))
