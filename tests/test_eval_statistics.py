"""The eval's statistics against hand-computed cases: McNemar's exact and clustered tests, and the cluster
bootstrap (zero width where every cluster is alike, the exact replicate distribution of a two-cluster case,
wider than a per-question bootstrap when a scene's questions move together, a paired difference of a method
with itself exactly 0 with p = 1)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from tokencomp.eval import mcnemar
from tokencomp.eval.cluster_bootstrap import (
    cluster_draws,
    mean_interval,
    paired_mean_difference,
    statistic_interval,
)


def test_exact_mcnemar_is_the_two_sided_binomial_tail():
    # b = 1, c = 5: n = 6, P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64, two-sided 14/64
    assert mcnemar.exact_p(1, 5) == pytest.approx(14 / 64) and mcnemar.exact_p(5, 1) == mcnemar.exact_p(1, 5)
    assert mcnemar.exact_p(0, 8) == pytest.approx(2 / 256)  # all 8 discordant pairs one way
    assert mcnemar.exact_p(3, 3) == 1.0 and mcnemar.exact_p(0, 0) == 1.0


def test_discordant_counts_and_refuses_partial_credit():
    a, b = [1, 1, 0, 0, 1], [1, 0, 1, 0, 0]
    assert mcnemar.discordant(a, b) == (2, 1)
    with pytest.raises(ValueError, match="0.5"):
        mcnemar.discordant([0.5, 1], [1, 1])


def test_clustered_mcnemar_by_hand():
    a = [1, 1, 1, 1, 0, 0]
    b = [0, 0, 0, 1, 1, 0]
    clusters = ["x", "x", "y", "z", "z", "z"]
    # per cluster, (right only in a) - (right only in b): x: 2 - 0, y: 1 - 0, z: 0 - 1 -> statistic (2 + 1 - 1)^2 / (4 + 1 + 1) = 4 / 6
    statistic = 4 / 6
    expected = 2 * (1 - NormalDist().cdf(math.sqrt(statistic)))  # chi-square(1) tail through the normal
    assert mcnemar.clustered_p(a, b, clusters) == pytest.approx(expected, rel=1e-9)


def test_clustered_mcnemar_with_singleton_clusters_is_the_classic_statistic():
    a = [1] * 7 + [0] * 2 + [1, 0]
    b = [0] * 7 + [1] * 2 + [1, 0]
    statistic = (7 - 2) ** 2 / (7 + 2)  # McNemar's (b - c)^2 / (b + c) without continuity correction
    expected = 2 * (1 - NormalDist().cdf(math.sqrt(statistic)))
    assert mcnemar.clustered_p(a, b, [str(i) for i in range(len(a))]) == pytest.approx(expected, rel=1e-9)
    assert mcnemar.clustered_p(a, a, [str(i) for i in range(len(a))]) == 1.0


def test_identical_clusters_give_a_zero_width_interval():
    values = [1, 0, 1] * 8  # eight scenes, each with the same three answers
    clusters = [f"scene{i // 3}" for i in range(len(values))]
    interval = mean_interval(values, clusters, replicates=500)
    assert interval.estimate == pytest.approx(2 / 3)
    assert interval.high - interval.low == pytest.approx(0.0, abs=1e-12) and interval.stderr < 1e-12


def test_two_clusters_resample_as_wholes():
    # scene A: two right answers, scene B: one wrong. Drawing 2 scenes: AA -> 1, AB or BA -> 2/3, BB -> 0,
    # with probabilities 1/4, 1/2, 1/4. (Resampling questions instead would never give exactly 2/3 this often.)
    values, clusters = [1, 1, 0], ["A", "A", "B"]
    _, counts = cluster_draws(clusters, 20000, 0)
    assert counts.sum(axis=1).tolist() == [2] * 20000
    interval = mean_interval(values, clusters, replicates=20000)
    mean = 0.25 * 1 + 0.5 * 2 / 3
    sd = math.sqrt(0.25 * 1 + 0.5 * 4 / 9 - mean**2)
    assert interval.estimate == pytest.approx(2 / 3)
    assert interval.stderr == pytest.approx(sd, rel=0.03)
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_correlated_scenes_widen_the_interval_by_the_cluster_size():
    # 100 questions, half right. In 20 scenes of 5 questions answered alike the standard error is that of 20
    # coin flips, sqrt(0.25 / 20) = 0.112; as 100 independent questions it is sqrt(0.25 / 100) = 0.05.
    values = [1] * 50 + [0] * 50
    scenes = mean_interval(values, [str(i // 5) for i in range(100)], replicates=4000)
    single = mean_interval(values, [str(i) for i in range(100)], replicates=4000)
    assert scenes.stderr == pytest.approx(math.sqrt(0.25 / 20), rel=0.08)
    assert single.stderr == pytest.approx(math.sqrt(0.25 / 100), rel=0.08)


def test_a_method_against_itself_differs_by_exactly_zero_with_p_one():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2, 60).tolist()
    clusters = [str(i // 4) for i in range(60)]
    result = paired_mean_difference(values, values, clusters, replicates=500)
    d = result.difference
    assert (d.estimate, d.low, d.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert (result.samples, result.clusters) == (60, 15)


def test_a_method_right_everywhere_the_other_is_wrong_has_p_zero():
    clusters = [str(i // 3) for i in range(30)]
    result = paired_mean_difference([1] * 30, [0] * 30, clusters, replicates=500)
    assert (result.difference.estimate, result.difference.low, result.difference.high) == (1.0, 1.0, 1.0)
    assert result.p_value == 0.0


def test_any_statistic_draws_the_same_clusters_as_the_mean():
    rng = np.random.default_rng(2)
    values = rng.random(40)
    clusters = [str(i // 5) for i in range(40)]
    generic, replicated = statistic_interval(lambda idx: float(values[idx].mean()), clusters, replicates=300)
    fast = mean_interval(values, clusters, replicates=300)
    assert len(replicated) == 300
    assert (generic.estimate, generic.low, generic.high, generic.stderr) == pytest.approx(
        (fast.estimate, fast.low, fast.high, fast.stderr), rel=1e-12)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one cluster per sample"):
        mean_interval([1, 0], ["a"])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_mean_difference([1, 0], [1], ["a", "b"])
