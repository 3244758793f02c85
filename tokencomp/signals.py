"""Importance signals: CLS->patch attention recomputed from one ViT layer, text relevance, feature norm.

Engines with fused attention (vLLM's CLIP) never materialise attention weights, so the CLS row is recomputed
from the layer's own q/k: it costs one [1, S] score row per head instead of the full [S, S] map.
"""

from __future__ import annotations

import torch

from tokencomp.base import Signals, cosine_matrix, minmax


def cls_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Head-averaged attention of the CLS query (row 0) over the patches.

    q, k: [S, H*Dh] projected queries/keys of one image, token 0 is CLS. Returns [S-1], rows sum to <= 1
    (the CLS->CLS share is dropped).
    """
    s, width = q.shape
    if width % num_heads:
        raise ValueError(f"q width {width} is not divisible by num_heads={num_heads}")
    head_dim = width // num_heads
    q_cls = q[0].float().view(num_heads, 1, head_dim)
    keys = k.float().view(s, num_heads, head_dim).transpose(0, 1)  # [H, S, Dh]
    scores = (q_cls @ keys.transpose(1, 2)).squeeze(1) / head_dim**0.5  # [H, S]
    return scores.softmax(dim=-1).mean(dim=0)[1:]


def received_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Mean attention each token receives from all tokens, averaged over heads: the salience of a tower without a
    CLS token (SigLIP), where no single query summarises the image.

    q, k: [S, H*Dh] projected queries/keys of one image. Returns [S], summing to 1.
    """
    s, width = q.shape
    if width % num_heads:
        raise ValueError(f"q width {width} is not divisible by num_heads={num_heads}")
    head_dim = width // num_heads
    queries = q.float().view(s, num_heads, head_dim).transpose(0, 1)  # [H, S, Dh]
    keys = k.float().view(s, num_heads, head_dim).transpose(0, 1)
    scores = queries @ keys.transpose(1, 2) / head_dim**0.5  # [H, S, S]
    return scores.softmax(dim=-1).mean(dim=(0, 1))


def qk_from_hf_clip_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [S, D] of a transformers `CLIPEncoderLayer` for its input `hidden` [S, D] (one image)."""
    x = layer.layer_norm1(hidden)
    return layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)


def qk_from_fused_qkv(layer: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [S, D'] from a layer holding a fused `self_attn.qkv_proj` (vLLM's CLIP encoder layer).

    Calls the projection module itself: vLLM may repack its weights for the CPU kernels, and under tensor
    parallelism it yields this rank's heads (D' = local heads x head dim). vLLM's linear layers return
    (output, bias); a plain nn.Linear returns the output.
    """
    out = layer.self_attn.qkv_proj(layer.layer_norm1(hidden))
    qkv = out[0] if isinstance(out, tuple) else out
    q, k, _ = qkv.chunk(3, dim=-1)
    return q, k


def text_relevance(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Mean cosine between each visual token [N, D] and the instruction's token embeddings [T, D] -> [N] float32,
    on the tokens' device; batched: tokens [B, N, D], text [B, T, D] -> [B, N]."""
    if text.ndim != tokens.ndim or text.shape[-1] != tokens.shape[-1] or text.shape[-2] == 0:
        raise ValueError(f"text must be [T, {tokens.shape[-1]}] with T >= 1, got {tuple(text.shape)}")
    return cosine_matrix(tokens, text).mean(dim=-1)


def question_ids(prompt: list[int], head: list[int], tail: list[int], image_token: int) -> list[int]:
    """The user's own words [Q] in a rendered one-turn chat prompt [L]: image tokens dropped, then the chat
    template's fixed head (where it first occurs: an engine may put BOS before it) and tail (when the prompt ends
    with it) cut off. A prompt the template did not render keeps all its non-image tokens."""
    ids = [t for t in prompt if t != image_token]
    head = [t for t in head if t != image_token]
    tail = [t for t in tail if t != image_token]
    starts = [i for i in range(len(ids) - len(head) + 1) if ids[i:i + len(head)] == head]
    end = len(ids) - len(tail)
    if not starts or ids[end:] != tail or starts[0] + len(head) >= end:
        return ids
    return ids[starts[0] + len(head):end]


def feature_norm(tokens: torch.Tensor) -> torch.Tensor:
    """L2 norm of each token [N, D] -> [N]."""
    return tokens.float().norm(dim=-1)


def resolve_importance(tokens: torch.Tensor, signals: Signals, method: str) -> torch.Tensor:
    """Importance r [N] in [0, 1] for `tokens` [N, D] (or [B, N] for [B, N, D]): `importance` if given, else the
    mean of the min-max normalised CLS attention and text relevance that were given (question-agnostic, -aware,
    or both)."""
    if signals.importance is not None:
        return minmax(signals.importance)
    parts = []
    if signals.cls_attn is not None:
        parts.append(minmax(signals.cls_attn))
    if signals.text is not None:
        parts.append(minmax(text_relevance(tokens, signals.text)))
    if not parts:
        raise ValueError(
            f"method {method!r} needs an importance signal: pass cls_attn [N], text [T, D] or importance [N]"
        )
    return torch.stack(parts).mean(dim=0)
