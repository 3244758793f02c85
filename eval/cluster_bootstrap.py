"""Cluster bootstrap: 95 % intervals for a score whose samples come in clusters (several questions about one
scene or image), and the paired interval and p-value of the difference between two methods on the same samples.

Questions about one scene are not independent (an easy scene makes all its questions easy), so resampling
single questions would give intervals too narrow. Here whole clusters are drawn with replacement, C draws of
the C clusters per replicate, and the statistic is recomputed on every sample of the drawn clusters: a score
that is a mean over samples becomes sum(drawn scores) / sum(drawn sample counts). A paired difference draws the
same clusters for both methods, so what the two share (the scenes' difficulty) cancels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
REPLICATES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the samples as they are
    low: float  # percentile interval of the replicates, at LEVEL
    high: float
    stderr: float  # standard deviation of the replicates


@dataclass(frozen=True)
class PairedDifference:
    difference: Interval  # statistic(a) - statistic(b) and its paired interval
    p_value: float  # two-sided: 2 * min(share of replicates <= 0, share >= 0), at most 1
    samples: int
    clusters: int


def cluster_draws(clusters: Sequence[str], replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer cluster codes [N] and how often each replicate drew each cluster, counts [B, C]."""
    names, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    if len(names) == 0:
        raise ValueError("cannot bootstrap an empty set of samples")
    draws = np.random.default_rng(seed).integers(0, len(names), size=(replicates, len(names)))
    counts = np.stack([np.bincount(row, minlength=len(names)) for row in draws])
    return codes, counts


def _interval(estimate: float, replicated: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(replicated, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high), float(replicated.std(ddof=1)))


def _replicated_means(values: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean of `values` [N] over each replicate's drawn samples, [B]."""
    sums = np.bincount(codes, weights=values, minlength=counts.shape[1])
    sizes = np.bincount(codes, minlength=counts.shape[1])
    return (counts @ sums) / (counts @ sizes)


def mean_interval(values: Sequence[float], clusters: Sequence[str], *, replicates: int = REPLICATES,
                  seed: int = 0) -> Interval:
    """The mean of per-sample `values` [N] with its cluster-bootstrap interval (`clusters` [N] names each
    sample's cluster)."""
    values = np.asarray(values, dtype=float)
    _check_lengths(values, clusters)
    codes, counts = cluster_draws(clusters, replicates, seed)
    return _interval(values.mean(), _replicated_means(values, codes, counts))


def statistic_interval(statistic: Callable[[np.ndarray], float], clusters: Sequence[str], *,
                       replicates: int = REPLICATES, seed: int = 0) -> tuple[Interval, np.ndarray]:
    """Any statistic of a sample set (given the indices [M] of the drawn samples, repeats included) with its
    cluster-bootstrap interval; also returns the replicates [B]. For aggregates that are not means (F1, MME)."""
    codes, counts = cluster_draws(clusters, replicates, seed)
    members = [np.flatnonzero(codes == c) for c in range(counts.shape[1])]
    replicated = np.array([statistic(np.concatenate([np.repeat(m, n) for m, n in zip(members, row) if n]))
                           for row in counts])
    return _interval(statistic(np.arange(len(codes))), replicated), replicated


def paired_mean_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence[str], *,
                           replicates: int = REPLICATES, seed: int = 0) -> PairedDifference:
    """mean(a) - mean(b) over the same samples ([N] each, in the same order), with the paired cluster-bootstrap
    interval and two-sided p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have equal lengths; got {a.shape} and {b.shape}")
    _check_lengths(a, clusters)
    codes, counts = cluster_draws(clusters, replicates, seed)
    replicated = _replicated_means(a - b, codes, counts)
    return paired_result(float((a - b).mean()), replicated, len(a), counts.shape[1])


def paired_result(difference: float, replicated: np.ndarray, samples: int, clusters: int) -> PairedDifference:
    """The difference's interval and p-value from its bootstrap replicates [B]."""
    p = min(1.0, 2 * min(float(np.mean(replicated <= 0)), float(np.mean(replicated >= 0))))
    return PairedDifference(_interval(difference, replicated), p, samples, clusters)


def _check_lengths(values: np.ndarray, clusters: Sequence[str]) -> None:
    if len(values) != len(clusters):
        raise ValueError(f"one cluster per sample expected; got {len(values)} values and {len(clusters)} clusters")
