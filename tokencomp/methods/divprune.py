"""DivPrune (Alvar et al., CVPR 2025): max-min diversity, importance ignored.

Distance d = 1 - cos. Start from the most isolated token (largest nearest-neighbour distance), then repeatedly
add the token farthest from the kept set (largest min distance): greedy farthest-point / k-center. Equal scores
go to the lowest index (torch.argmax returns the first maximum).
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, selected
from tokencomp.methods import register


def farthest_point_indices(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """K indices [K] in pick order for tokens [N, D]: one float32 N x N cosine matrix, then K steps of [N]-vector
    updates of the running min distance, all on the tokens' device."""
    dist = 1 - cosine_matrix(tokens)
    nearest = dist.clone().fill_diagonal_(torch.inf).min(dim=1).values
    picks = torch.empty(k, dtype=torch.long, device=tokens.device)
    picks[0] = torch.argmax(nearest)
    min_dist = dist[picks[0]].clone()
    min_dist[picks[0]] = -torch.inf
    for t in range(1, k):
        picks[t] = torch.argmax(min_dist)
        torch.minimum(min_dist, dist[picks[t]], out=min_dist)
        min_dist[picks[t]] = -torch.inf
    return picks


@register("divprune")
def divprune(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    return selected(tokens, farthest_point_indices(tokens, k))
