"""VisPruner (Zhang et al., ICCV 2025): important tokens by CLS attention, diverse ones by de-duplication, as in the
authors' released code (`llava/model/llava_arch.py`, `encode_images`).

floor(r K) tokens with the highest CLS attention are kept (r = 0.5, the released scripts' setting). The others,
in descending-attention order, are de-duplicated in rounds: split the current order into even / odd positions,
score each even token by its highest cosine to an odd one, delete the (at most 8) most duplicated even tokens,
and continue with the surviving even tokens in descending-score order followed by the odd ones, until K - floor(r K)
remain. Cosines are taken on the vision tower's features before the projector (`features`) when given, as the
released code does; without them, on the tokens themselves. The output is in spatial order.

Deviation: the released code sorts with torch's unstable argsort, so its order among exactly equal scores is
unspecified; here equal scores keep their current order (stable sort), which makes the kept set reproducible.
"""

from __future__ import annotations

import math

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, descending, selected
from tokencomp.methods import register

DEDUP_STEP = 8  # the released code's per-round deletion cap


def deduplicate(sim: torch.Tensor, residual: torch.Tensor, keep: int) -> torch.Tensor:
    """Reduce `residual` [M] (indices in descending-attention order) to `keep` by the released even/odd rounds;
    sim [N, N] are the cosines the rounds compare. Each round is an [M/2, M/2] gather and a sort."""
    if keep == 0:
        return residual[:0]
    while len(residual) > keep:  # so len(residual) >= 2 and the odd half is never empty
        drop = min(DEDUP_STEP, len(residual) - keep)
        even, odd = residual[0::2], residual[1::2]
        # rows and columns gathered in index order (contiguous reads; a max over the odd tokens ignores their
        # order), the scores put back in the evens' order afterwards
        rows, back = torch.sort(even)
        dup = torch.empty(len(even), device=sim.device)
        dup[back] = sim.index_select(0, rows).index_select(1, torch.sort(odd).values).amax(dim=1)
        survivors = descending(dup)[drop:]
        residual = torch.cat([even[survivors], odd])
    return residual


@register("vispruner", uses=("cls_attn", "features"))
def vispruner(tokens: torch.Tensor, k: int, signals: Signals, *, important_ratio: float = 0.5) -> Compressed:
    if signals.cls_attn is None:
        raise ValueError("method 'vispruner' needs cls_attn [N] (CLS->patch attention of the feature layer)")
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"important_ratio must be in [0, 1], got {important_ratio!r}")
    n_imp = math.floor(important_ratio * k)
    order = descending(signals.cls_attn.float())
    sim = cosine_matrix(tokens if signals.features is None else signals.features)
    diverse = deduplicate(sim, order[n_imp:], k - n_imp)
    return selected(tokens, torch.cat([order[:n_imp], diverse]))
