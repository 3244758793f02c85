"""VisPruner (Zhang et al., ICCV 2025): important tokens by CLS attention, diverse ones by de-duplication.

r K tokens with the highest CLS attention (r = 0.5, the released scripts' setting); from the remaining tokens,
repeatedly split them into even / odd halves (in original order), score each even token by its highest cosine
to an odd one, and delete the (at most 8) most duplicated, until the rest of the budget is left.
"""

from __future__ import annotations

import math

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, minmax, selected, tolerant_order
from tokencomp.methods import register

DEDUP_STEP = 8
_TIE = 1e-4  # scores (in [0, 1] / cosines) closer than this are ties: lowest index first


def deduplicate(tokens: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """Reduce `candidates` [M] (sorted indices into tokens [N, D]) to `keep` by even/odd duplicate removal."""
    if keep == 0:
        return candidates[:0]
    sim = cosine_matrix(tokens)
    remain = candidates
    while len(remain) > keep:  # so len(remain) >= 2 and `odd` is never empty
        even, odd = remain[0::2], remain[1::2]
        drop = min(DEDUP_STEP, len(remain) - keep)
        dup = sim[even][:, odd].max(dim=1).values
        victims = even[tolerant_order(dup, _TIE)[:drop]]
        remain = remain[~torch.isin(remain, victims)]
    return remain


@register("vispruner", uses=("cls_attn",))
def vispruner(tokens: torch.Tensor, k: int, signals: Signals, *, important_ratio: float = 0.5) -> Compressed:
    if signals.cls_attn is None:
        raise ValueError("method 'vispruner' needs cls_attn [N] (CLS->patch attention of the feature layer)")
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"important_ratio must be in [0, 1], got {important_ratio!r}")
    n_imp = math.ceil(important_ratio * k)
    order = tolerant_order(minmax(signals.cls_attn), _TIE)
    important, rest = order[:n_imp], torch.sort(order[n_imp:]).values
    diverse = deduplicate(tokens, rest, k - n_imp)
    return selected(tokens, torch.cat([important, diverse]))
