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
    """K indices [B, K] in pick order for a batch of images [B, N, D]: one float32 N x N cosine matrix per image,
    then K steps of [B, N] updates of the running min distance, all on the tokens' device."""
    dist = 1 - cosine_matrix(tokens)  # [B, N, N]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    nearest = dist.clone()
    nearest.diagonal(dim1=1, dim2=2).fill_(torch.inf)
    picks = torch.empty(tokens.shape[0], k, dtype=torch.long, device=tokens.device)
    picks[:, 0] = torch.argmax(nearest.amin(dim=2), dim=1)
    min_dist = dist[rows, picks[:, 0]].clone()
    min_dist[rows, picks[:, 0]] = -torch.inf
    for t in range(1, k):
        picks[:, t] = torch.argmax(min_dist, dim=1)
        torch.minimum(min_dist, dist[rows, picks[:, t]], out=min_dist)
        min_dist[rows, picks[:, t]] = -torch.inf
    return picks


@register("divprune", batched=True)
def divprune(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    return selected(tokens, farthest_point_indices(tokens, k))
