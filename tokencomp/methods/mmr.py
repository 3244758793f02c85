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
    """K indices [K] in pick order for tokens [N, D] and importance [N] in [0, 1]; each step is a few [N]-vector
    operations on the tokens' device."""
    sim = cosine_matrix(tokens)
    relevance = lam * importance.float()
    picks = torch.empty(k, dtype=torch.long, device=tokens.device)
    picks[0] = torch.argmax(relevance)
    max_sim = sim[picks[0]].clone()
    taken = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    taken[picks[0]] = True
    for t in range(1, k):
        score = (relevance - (1 - lam) * max_sim).masked_fill_(taken, -torch.inf)
        picks[t] = torch.argmax(score)
        taken[picks[t]] = True
        torch.maximum(max_sim, sim[picks[t]], out=max_sim)
    return picks


@register("mmr", uses=("cls_attn", "text", "importance"))
def mmr(tokens: torch.Tensor, k: int, signals: Signals, *, lam: float = 0.5) -> Compressed:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    importance = resolve_importance(tokens, signals, "mmr")
    return selected(tokens, mmr_indices(tokens, k, importance, lam))
