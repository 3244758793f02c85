"""VisionZip (Yang et al., CVPR 2025): dominant tokens by CLS attention + contextual tokens by merging.

Dominant: the top-K_d tokens by CLS->patch attention. Contextual: of the rest, K_c targets at a uniform stride;
every other remaining token joins its most similar target by key cosine (head-mean keys of the feature layer,
required: there is no fallback), and a contextual token is the target plus the mean of what joined it. Split as
the released runner: 54 + 10 at K = 64, the same ratio elsewhere. Registered `before_projector`: the serving
engines hand it the vision tower's features and project its K outputs, so the merge happens where the released
code merges (the projector is non-linear; merging after it would average projections instead).

Deviations from the released code, and why:
- The released dominant set includes the CLS token (CLS + 53 patches at K = 64). Our engines feed the language
  model patch rows only (LLaVA's default feature strategy drops CLS), and every output row carries the patch
  position it stands at (`index`, which M-RoPE models need); CLS has none. So the dominant set is 54 patches.
- The released code emits dominant tokens first, then contextual ones. Outputs here are in `index` order, the
  invariant every method keeps so that positions increase along the sequence; contextual tokens stand at their
  target patch's position among the dominant ones.
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, descending, group_sum
from tokencomp.methods import register

DOMINANT_SHARE = 54 / 64


@register("visionzip", uses=("cls_attn", "keys"), generates=True, before_projector=True)
def visionzip(tokens: torch.Tensor, k: int, signals: Signals, *, dominant_share: float = DOMINANT_SHARE
              ) -> Compressed:
    if signals.cls_attn is None:
        raise ValueError("method 'visionzip' needs cls_attn [N] (CLS->patch attention of the feature layer)")
    if signals.keys is None:
        raise ValueError("method 'visionzip' needs keys [N, Dk] (the feature layer's head-mean key vectors)")
    if not 0.0 < dominant_share <= 1.0:
        raise ValueError(f"dominant_share must be in (0, 1], got {dominant_share!r}")
    n = tokens.shape[0]
    n_dom = max(1, round(k * dominant_share))
    n_ctx = k - n_dom
    dev = tokens.device
    order = descending(signals.cls_attn.float())
    dominant = order[:n_dom]
    rest = torch.sort(order[n_dom:]).values
    slot = torch.full((n,), -1, dtype=torch.long, device=dev)  # without contextual tokens the rest is dropped
    slot[dominant] = torch.arange(n_dom, device=dev)
    x = tokens.float()
    out = [x[dominant]]
    anchors = [dominant]
    if n_ctx:
        step = max(1, len(rest) // n_ctx)
        pos = torch.arange(0, len(rest), step, device=dev)[:n_ctx]
        targets = rest[pos]
        is_target = torch.zeros(len(rest), dtype=torch.bool, device=dev)
        is_target[pos] = True
        others = rest[~is_target]
        join = cosine_matrix(signals.keys[others], signals.keys[targets]).argmax(dim=1)  # [len(others)]
        counts = torch.bincount(join, minlength=n_ctx).clamp_min(1)
        merged = group_sum(x[others], join, n_ctx) / counts[:, None]
        out.append(x[targets] + merged)
        anchors.append(targets)
        slot[targets] = n_dom + torch.arange(n_ctx, device=dev)
        slot[others] = n_dom + join
    anchors_all = torch.cat(anchors)
    order_out = torch.argsort(anchors_all)
    rank = torch.empty_like(order_out)
    rank[order_out] = torch.arange(k, device=dev)
    assignment = torch.where(slot >= 0, rank[slot.clamp(min=0)], -1)
    return Compressed(tokens=torch.cat(out)[order_out], index=anchors_all[order_out], assignment=assignment)
