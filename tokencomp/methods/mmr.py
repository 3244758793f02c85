"""MMR / IDPruner-style selection (Tan et al., 2026): maximal marginal relevance.

Pick the most important token, then repeatedly the one maximising lambda * r_i - (1 - lambda) * max_{j in S} cos_ij.
Equal scores go to the lowest index.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, selected
from tokencomp.methods import register
from tokencomp.signals import resolve_importance


def mmr_indices(tokens: torch.Tensor, k: int, importance: torch.Tensor, lam: float) -> torch.Tensor:
    """K indices [B, K] in pick order for a batch of images [B, N, D] and importance [B, N] in [0, 1]; each step
    is a few [B, N] operations on the tokens' device."""
    sim = cosine_matrix(tokens)  # [B, N, N]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    relevance = lam * importance.float()
    picks = torch.empty(tokens.shape[0], k, dtype=torch.long, device=tokens.device)
    picks[:, 0] = torch.argmax(relevance, dim=1)
    max_sim = sim[rows, picks[:, 0]].clone()
    taken = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    taken[rows, picks[:, 0]] = True
    for t in range(1, k):
        score = (relevance - (1 - lam) * max_sim).masked_fill_(taken, -torch.inf)
        picks[:, t] = torch.argmax(score, dim=1)
        taken[rows, picks[:, t]] = True
        torch.maximum(max_sim, sim[rows, picks[:, t]], out=max_sim)
    return picks


@register("mmr", uses=("cls_attn", "text", "importance"), batched=True)
def mmr(tokens: torch.Tensor, k: int, signals: Signals, *, lam: float = 0.5) -> Compressed:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    importance = resolve_importance(tokens, signals, "mmr")
    return selected(tokens, mmr_indices(tokens, k, importance, lam))
