"""CDPruner (Zhang et al., NeurIPS 2025): conditional DPP over the visual tokens.

Similarity L = cosine between tokens; relevance r = min-max normalised mean cosine between each token and the
instruction's embeddings; conditional kernel L~ = diag(r) L diag(r). Greedy MAP inference of the DPP (maximise
log det L~_S) by incremental Cholesky updates (Chen et al., NeurIPS 2018): O(N K^2).
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, first_max, minmax, selected, tolerant_order
from tokencomp.methods import register
from tokencomp.signals import text_relevance

# relative to the largest diagonal entry: gains below this add no volume (float32 cosines of duplicate patches
# leave residuals ~1e-7), and gains closer than this are ties, broken by the lowest index
_TOL = 1e-5


def greedy_map_dpp(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """K indices in pick order maximising log det greedily for a PSD kernel [N, N].

    d2_i is the squared Cholesky residual of candidate i given the picks (= gain exp(log det change)); once no
    candidate adds volume (rank exhausted) the remaining slots go to the largest diagonal entries.
    """
    n = kernel.shape[0]
    kernel = kernel.double()
    d2 = torch.diagonal(kernel).clone()
    rows = torch.zeros(k, n, dtype=torch.float64)
    picked = torch.zeros(n, dtype=torch.bool)
    picks: list[int] = []
    tol = _TOL * float(d2.max())
    for t in range(k):
        d2_free = d2.masked_fill(picked, -torch.inf)
        j = first_max(d2_free, tol)
        if d2_free[j] <= tol:
            break
        e = (kernel[j] - rows[:t, j] @ rows[:t]) / d2[j].sqrt()
        rows[t] = e
        d2 = d2 - e * e
        picks.append(j)
        picked[j] = True
    if len(picks) < k:
        diag = torch.diagonal(kernel).masked_fill(picked, -torch.inf)
        picks += tolerant_order(diag, tol)[: k - len(picks)].tolist()
    return torch.tensor(picks, dtype=torch.long)


@register("cdpruner", uses=("text",))
def cdpruner(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    if signals.text is None:
        raise ValueError("method 'cdpruner' needs text [T, D] (the instruction's token embeddings)")
    relevance = minmax(text_relevance(tokens, signals.text))
    kernel = relevance[:, None] * cosine_matrix(tokens) * relevance[None, :]
    return selected(tokens, greedy_map_dpp(kernel, k))
