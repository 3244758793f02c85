"""McNemar's test on paired right/wrong answers: exact (questions independent) and clustered (Durkalski et
al. 2003, for questions that share a scene).

With b = questions only method A answers right and c = questions only B answers right, under "A and B are
equally good" each discordant question is a fair coin: the exact test's p is the two-sided binomial tail of
min(b, c) in b + c tosses. Questions of one scene are correlated, which the exact test ignores (its p is then
too small); Durkalski's statistic (sum_k (b_k - c_k))^2 / sum_k (b_k - c_k)^2 over clusters k uses the spread
of the per-cluster differences instead, and is compared with a chi-square of 1 degree of freedom.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence


def discordant(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """(b, c): how many samples only `a` got right, and only `b`. Scores [N] must be 0 or 1."""
    for name, scores in (("a", a), ("b", b)):
        bad = [s for s in scores if s not in (0, 1)]
        if bad:
            raise ValueError(f"McNemar needs right/wrong scores (0 or 1); {name} has {bad[0]!r}")
    if len(a) != len(b):
        raise ValueError(f"paired scores must have equal lengths; got {len(a)} and {len(b)}")
    return sum(x > y for x, y in zip(a, b)), sum(x < y for x, y in zip(a, b))


def exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def clustered_p(a: Sequence[float], b: Sequence[float], clusters: Sequence[str]) -> float:
    """Durkalski's clustered McNemar p-value (chi-square, 1 degree of freedom) for right/wrong scores [N]."""
    discordant(a, b)
    per_cluster: dict[str, int] = defaultdict(int)
    for x, y, k in zip(a, b, clusters, strict=True):
        per_cluster[k] += int(x) - int(y)
    spread = sum(d * d for d in per_cluster.values())
    if spread == 0:
        return 1.0
    statistic = sum(per_cluster.values()) ** 2 / spread
    return math.erfc(math.sqrt(statistic / 2))
