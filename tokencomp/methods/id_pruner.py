"""ID-Pruner (ours): importance and diversity scored separately, combined as a structured subset selection.

Objective over a kept set S of size K, with r in [0, 1] and s_uv = max(0, cos(v_u, v_v)):

    F(S) = alpha / K * sum_{i in S} r_i  +  (1 - alpha) / N * sum_u max_{j in S} s_uj

Both terms are monotone submodular, so greedy is a (1 - 1/e) approximation, and lazy greedy finds the same set
with far fewer gain evaluations. Disentangled schedule: the first ceil(rho K) slots go to the most important
tokens, the rest to greedy F-gain; rho shrinks with K/N because diversity matters more under tight budgets.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, selected, tolerant_order
from tokencomp.methods import register
from tokencomp.signals import resolve_importance

RHO_MIN, RHO_MAX = 0.25, 1.0
_TOL = 1e-6  # ties: gains or importances this close (relative to their scale) rank by index


def rho_schedule(k: int, n: int) -> float:
    """Share of the budget spent on pure importance: 0.25 + 0.75 sqrt(K/N) (0.5 at 64 of 576, 0.68 at 192)."""
    return RHO_MIN + (RHO_MAX - RHO_MIN) * math.sqrt(min(k, n) / n)


def objective(sim: np.ndarray, importance: np.ndarray, subset: list[int], k: int, alpha: float) -> float:
    """F(S) for a subset (list of indices); sim [N, N] already clamped at 0."""
    n = sim.shape[0]
    if not subset:
        return 0.0
    coverage = sim[:, subset].max(axis=1).sum()
    return float(alpha / k * importance[subset].sum() + (1 - alpha) / n * coverage)


def select_by_coverage(
    sim: np.ndarray, importance: np.ndarray, k: int, alpha: float, preselected: list[int] | None = None
) -> list[int]:
    """Lazy greedy on F: extend `preselected` to k indices, in pick order.

    sim [N, N] symmetric, clamped at 0; importance [N] in [0, 1]. Gains only shrink as S grows (submodularity),
    so a stale gain is an upper bound: refresh bounds from the top until none left stale can reach the best
    fresh gain. Gains within _TOL of the best are ties and the lowest index wins, so duplicate patches are
    picked the same way whatever float noise the engine adds.
    """
    n = sim.shape[0]
    picks = list(preselected or [])
    cover = sim[:, picks].max(axis=1) if picks else np.zeros(n, dtype=sim.dtype)
    w_imp, w_cov = alpha / k, (1 - alpha) / n
    tol = _TOL * (w_imp + w_cov * n)  # relative to the largest gain possible
    taken = np.zeros(n, dtype=bool)
    taken[picks] = True
    gains = w_imp * importance + w_cov * np.maximum(sim - cover[None, :], 0).sum(axis=1)
    heap = [(-float(gains[i]), int(i)) for i in np.flatnonzero(~taken)]
    heapq.heapify(heap)
    while len(picks) < k:
        fresh: list[tuple[float, int]] = []
        best = -math.inf
        while heap and -heap[0][0] >= best - tol:
            _, i = heapq.heappop(heap)
            gain = w_imp * float(importance[i]) + w_cov * float(np.maximum(sim[i] - cover, 0).sum())
            fresh.append((gain, i))
            best = max(best, gain)
        winner = min(i for gain, i in fresh if gain >= best - tol)
        picks.append(winner)
        np.maximum(cover, sim[winner], out=cover)
        for gain, i in fresh:
            if i != winner:
                heapq.heappush(heap, (-gain, i))
    return picks


def id_pruner_indices(
    tokens: torch.Tensor, k: int, importance: torch.Tensor, *, alpha: float = 0.5, rho: float | None = None
) -> torch.Tensor:
    """The K kept indices (unsorted) for tokens [N, D] and importance [N] in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    n = tokens.shape[0]
    rho = rho_schedule(k, n) if rho is None else rho
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")
    n_important = math.ceil(rho * k)
    important = tolerant_order(importance.float(), _TOL)[:n_important].tolist()
    sim = cosine_matrix(tokens).clamp_(min=0).numpy()
    picks = select_by_coverage(sim, importance.float().numpy(), k, alpha, preselected=important)
    return torch.tensor(picks, dtype=torch.long)


@register("id_pruner", uses=("cls_attn", "text", "importance"))
def id_pruner(tokens: torch.Tensor, k: int, signals: Signals, *, alpha: float = 0.5, rho: float | None = None
              ) -> Compressed:
    importance = resolve_importance(tokens, signals, "id_pruner")
    return selected(tokens, id_pruner_indices(tokens, k, importance, alpha=alpha, rho=rho))
