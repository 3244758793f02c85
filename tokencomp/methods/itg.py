"""ITG (ours): importance-aware token generation — compression as reconstruction.

1. K anchors by ID-Pruner. 2. Every token joins its most similar anchor (cosine; faiss when N is large).
3. Each output is the barycentre of its cluster with weights rho_j = exp(r'_j / tau), where r' is the importance
   with each anchor lifted just above its cluster's maximum: the selector chose it as the representative, and
   so tau -> 0 returns exactly the anchors (pure ID-Pruner selection).
4. Norm restoration: rescale each output to its cluster's weighted mean norm, since averaging shrinks norms and
   the LLM was trained on unshrunk tokens.

Moment property (before step 4): with cluster masses M_a = sum_{j in a} rho_j, the M-weighted mean of the outputs
equals the rho-weighted mean of the input exactly; the second moment falls short by the within-cluster spread.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix
from tokencomp.methods import register
from tokencomp.methods.id_pruner import id_pruner_indices
from tokencomp.signals import resolve_importance

FAISS_MIN_TOKENS = 4096  # below this a dense [N, K] matmul is faster than building an index
_ANCHOR_LIFT = 1e-3  # how far above its cluster's maximum importance an anchor is placed


def assign_to_anchors(tokens: torch.Tensor, anchors: torch.Tensor, faiss_min_tokens: int = FAISS_MIN_TOKENS
                      ) -> torch.Tensor:
    """Slot [N] of each token's most similar anchor (cosine); anchors [K] (sorted) always own their slot."""
    n = tokens.shape[0]
    if n >= faiss_min_tokens:
        import faiss

        x = torch.nn.functional.normalize(tokens.float(), dim=-1).contiguous().numpy()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[anchors.numpy()])
        _, nearest = index.search(x, 1)
        slot = torch.from_numpy(nearest[:, 0]).long()
    else:
        slot = cosine_matrix(tokens, tokens[anchors]).argmax(dim=1)
    slot[anchors] = torch.arange(len(anchors))  # duplicates of an anchor must not steal it
    return slot


def token_log_weights(importance: torch.Tensor, slot: torch.Tensor, anchors: torch.Tensor, tau: float
                      ) -> torch.Tensor:
    """log rho_j [N] = r'_j / tau, r' = importance with each anchor lifted above its cluster's maximum."""
    k = len(anchors)
    cluster_max = torch.full((k,), -torch.inf).scatter_reduce(0, slot, importance.float(), "amax")
    lifted = importance.float().clone()
    lifted[anchors] = cluster_max + _ANCHOR_LIFT
    return lifted / tau


@register("itg", uses=("cls_attn", "text", "importance"), generates=True)
def itg(tokens: torch.Tensor, k: int, signals: Signals, *, tau: float = 0.2, restore_norm: bool = True,
        alpha: float = 0.5, rho: float | None = None, faiss_min_tokens: int = FAISS_MIN_TOKENS) -> Compressed:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    importance = resolve_importance(tokens, signals, "itg")
    anchors = torch.sort(id_pruner_indices(tokens, k, importance, alpha=alpha, rho=rho)).values
    slot = assign_to_anchors(tokens, anchors, faiss_min_tokens)
    log_w = token_log_weights(importance, slot, anchors, tau)
    # softmax within each cluster, stabilised by the cluster's own maximum
    w = torch.exp(log_w - log_w[anchors][slot])
    x = tokens.float()
    mass = torch.zeros(k).index_add_(0, slot, w)
    out = torch.zeros(k, x.shape[1]).index_add_(0, slot, w[:, None] * x) / mass[:, None]
    if restore_norm:
        target = torch.zeros(k).index_add_(0, slot, w * x.norm(dim=-1)) / mass
        out = out * (target / out.norm(dim=-1).clamp_min(1e-12))[:, None]
    return Compressed(tokens=out, index=anchors, assignment=slot)
