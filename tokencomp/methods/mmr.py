"""MMR / IDPruner-style selection (Tan et al., 2026): maximal marginal relevance.

Pick the most important token, then repeatedly the one maximising lambda * r_i - (1 - lambda) * max_{j in S} cos_ij.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, first_max, selected
from tokencomp.methods import register
from tokencomp.signals import resolve_importance

_TIE = 1e-6  # scores closer than this are ties: lowest index wins


def mmr_indices(tokens: torch.Tensor, k: int, importance: torch.Tensor, lam: float) -> torch.Tensor:
    """K indices in pick order; importance [N] in [0, 1]."""
    sim = cosine_matrix(tokens)
    first = first_max(importance.float(), _TIE)
    picks = [first]
    max_sim = sim[first].clone()
    for _ in range(k - 1):
        score = lam * importance - (1 - lam) * max_sim
        score[picks] = -torch.inf
        nxt = first_max(score, _TIE)
        picks.append(nxt)
        torch.maximum(max_sim, sim[nxt], out=max_sim)
    return torch.tensor(picks, dtype=torch.long)


@register("mmr", uses=("cls_attn", "text", "importance"))
def mmr(tokens: torch.Tensor, k: int, signals: Signals, *, lam: float = 0.5) -> Compressed:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    importance = resolve_importance(tokens, signals, "mmr")
    return selected(tokens, mmr_indices(tokens, k, importance, lam))
