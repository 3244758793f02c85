"""DivPrune (Alvar et al., CVPR 2025): max-min diversity, importance ignored.

Distance d = 1 - cos. Start from the most isolated token (largest nearest-neighbour distance), then repeatedly
add the token farthest from the kept set (largest min distance): greedy farthest-point / k-center.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, first_max, selected
from tokencomp.methods import register

_TIE = 1e-6  # distances closer than this are ties: lowest index wins


def farthest_point_indices(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """K indices in pick order, by running min-distance updates: O(N^2 D) once + O(K N)."""
    dist = 1 - cosine_matrix(tokens)
    nearest = dist.clone().fill_diagonal_(torch.inf).min(dim=1).values
    first = first_max(nearest, _TIE)
    picks = [first]
    min_dist = dist[first].clone()
    min_dist[first] = -torch.inf
    for _ in range(k - 1):
        nxt = first_max(min_dist, _TIE)
        picks.append(nxt)
        torch.minimum(min_dist, dist[nxt], out=min_dist)
        min_dist[nxt] = -torch.inf
    return torch.tensor(picks, dtype=torch.long)


@register("divprune")
def divprune(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    return selected(tokens, farthest_point_indices(tokens, k))
