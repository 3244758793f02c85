"""ITG (ours): importance-aware token generation — compression as reconstruction.

1. K anchors by ID-Pruner. 2. Every token joins its most similar anchor (cosine: a column gather of the cosine
matrix ID-Pruner already built, so assignment costs no second matmul).
3. Each output is the barycentre of its cluster with weights rho_j = exp(r'_j / tau), where r' is the importance
   with each anchor lifted just above its cluster's maximum: the selector chose it as the representative, and
   so tau -> 0 returns exactly the anchors (pure ID-Pruner selection).
4. Norm restoration: rescale each output to its cluster's weighted mean norm, since averaging shrinks norms and
   the LLM was trained on unshrunk tokens.

Moment property (before step 4): with cluster masses M_a = sum_{j in a} rho_j, the M-weighted mean of the outputs
equals the rho-weighted mean of the input exactly; the second moment falls short by the within-cluster spread.
All work is float32 on the tokens' device.

Where each choice comes from: anchors + nearest-anchor assignment + importance-weighted barycentres are ours
(the dissertation ITG is named after is public only as an abstract); the idea of merging the dropped tokens
into kept ones follows VisionZip's contextual tokens and ToMe; norm restoration is ours. Validation
measurements (`tokencomp eval --model models/tokencomp-tiny-llava --in-process --split val --limit 1000
--budgets 32 64 --methods itg`, 1000 questions): alpha 0.5 -> 0.1 (ID-Pruner's ALPHA) 84.3 -> 86.6 at K = 32,
89.2 -> 89.5 at K = 64; restore_norm=false gave the same answers as true (84.3 / 89.2), so norm restoration
neither helps nor hurts this model; anchors chosen on the tower's features before the projector lost (83.6 / 88.3).
With ID-Pruner's distinctness-weighted coverage (`bandwidth`, same default; 2000 validation questions,
`--limit 2000 --options itg.bandwidth=0.1`): 88.7 / 89.1 at K = 32 / 64 (uniform weights 85.2 / 88.4), within
0.1 of ID-Pruner's own selection at both budgets: merging still adds nothing measurable on this model.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, group_sum
from tokencomp.methods import register
from tokencomp.methods.id_pruner import ALPHA, BANDWIDTH, id_pruner_indices
from tokencomp.signals import resolve_importance

_ANCHOR_LIFT = 1e-3  # how far above its cluster's maximum importance an anchor is placed


def assign_to_anchors(sim: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Slot [N] of each token's most similar anchor, from token cosines sim [N, N]; anchors [K] (sorted) always
    own their slot."""
    slot = sim[anchors].argmax(dim=0)  # rows of the symmetric sim: a contiguous gather
    slot[anchors] = torch.arange(len(anchors), device=sim.device)  # duplicates of an anchor must not steal it
    return slot


def token_log_weights(importance: torch.Tensor, slot: torch.Tensor, anchors: torch.Tensor, tau: float
                      ) -> torch.Tensor:
    """log rho_j [N] = r'_j / tau, r' = importance with each anchor lifted above its cluster's maximum."""
    k = len(anchors)
    r = importance.float()
    cluster_max = torch.full((k,), -torch.inf, device=r.device).scatter_reduce(0, slot, r, "amax")
    lifted = r.clone()
    lifted[anchors] = cluster_max + _ANCHOR_LIFT
    return lifted / tau


@register("itg", uses=("cls_attn", "text", "importance"), generates=True)
def itg(tokens: torch.Tensor, k: int, signals: Signals, *, tau: float = 0.2, restore_norm: bool = True,
        alpha: float = ALPHA, rho: float | None = None, bandwidth: float = BANDWIDTH) -> Compressed:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    importance = resolve_importance(tokens, signals, "itg")
    sim = cosine_matrix(tokens)
    anchors = torch.sort(id_pruner_indices(sim, k, importance, alpha=alpha, rho=rho, bandwidth=bandwidth)).values
    slot = assign_to_anchors(sim, anchors)
    log_w = token_log_weights(importance, slot, anchors, tau)
    # softmax within each cluster, stabilised by the cluster's own maximum
    w = torch.exp(log_w - log_w[anchors][slot])
    x = tokens.float()
    mass = torch.zeros(k, device=x.device).index_add_(0, slot, w)
    out = group_sum(x, slot, k, w) / mass[:, None]
    if restore_norm:
        target = torch.zeros(k, device=x.device).index_add_(0, slot, w * x.norm(dim=-1)) / mass
        out = out * (target / out.norm(dim=-1).clamp_min(1e-12))[:, None]
    return Compressed(tokens=out, index=anchors, assignment=slot)
