"""The compression step both engines share: which signals a spec gets, applied to one image's visual tokens.

The vLLM model (`serving.model`) and the transformers reference (`serving.hf_reference`) both call
`compress_image`, so the two paths differ only in how they compute features, never in what they keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

import tokencomp
from tokencomp.base import Compressed
from tokencomp.serving.spec import Spec
from tokencomp.signals import cls_attention, received_attention


def vision_signals(q: torch.Tensor, k: torch.Tensor, num_heads: int, *, has_cls: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(importance [N], keys [N, Dh]) of one image's patches from its feature layer's q, k [S, H*Dh]; keys are
    averaged over heads, as VisionZip compares them. With a CLS token (CLIP, token 0) the importance is the
    CLS->patch attention; without one (SigLIP) it is the mean attention each patch receives."""
    s, width = k.shape
    keys = k.float().view(s, num_heads, width // num_heads).mean(dim=1)
    if has_cls:
        return cls_attention(q, k, num_heads), keys[1:]
    return received_attention(q, k, num_heads), keys


def merged_signals(q: torch.Tensor, k: torch.Tensor, num_heads: int, unit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(importance [N], keys [N, Dh]) of one image's merged tokens from its patches' q, k [S = unit * N, H*Dh],
    where the `unit` consecutive patches of each merged token are adjacent rows (Qwen2-VL's 2 x 2 merger): the
    attention each patch receives, summed over its token's patches, and their head-mean keys, averaged."""
    importance, keys = vision_signals(q, k, num_heads, has_cls=False)
    return importance.view(-1, unit).sum(dim=1), keys.view(-1, unit, keys.shape[-1]).mean(dim=1)


_SENTINEL = "\ue000"  # a private-use character: no template or question contains it


def template_edges(processor) -> tuple[list[int], list[int]]:
    """Token ids of the chat template's fixed text before and after a one-image user question (head [H], tail
    [T]) for a transformers processor: the template rendered around a sentinel question, each side tokenized.
    Both engines cut these off the prompt (`question_ids`), so methods read the question's own words."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        return [], []
    head, tail = rendered.split(_SENTINEL)
    tokenize = processor.tokenizer
    return (tokenize(head, add_special_tokens=False).input_ids, tokenize(tail, add_special_tokens=False).input_ids)


def compress_image(tokens: torch.Tensor, spec: Spec, *, cls_attn: torch.Tensor, keys: torch.Tensor,
                   features: torch.Tensor | None, project: Callable[[torch.Tensor], torch.Tensor] | None,
                   grid: tuple[int, int], text: torch.Tensor | None) -> Compressed:
    """Apply `spec` to one image's projected tokens [N, D]. `features` [N, Dv] are the same patches before the
    projector `project` ([M, Dv] -> [M, D]): methods that compare patches there read them (VisPruner), and
    methods registered `before_projector` (VisionZip) compress them and have their K outputs projected, as their
    released code does (None where the model has no such features, e.g. Qwen2-VL, whose CLS-less tower those
    methods cannot serve). `text` [T, D] is used only when the spec reads it."""
    if spec.method == "none":
        return Compressed(tokens=tokens, index=torch.arange(tokens.shape[0], device=tokens.device))
    signals = {"cls_attn": cls_attn, "keys": keys, "features": features, "grid": grid, "seed": spec.seed}
    if spec.uses_text():
        signals["text"] = text
    if not tokencomp.methods.get(spec.method).before_projector:
        return tokencomp.compress(tokens, spec.budget, spec.method, **signals, **spec.options)
    out = tokencomp.compress(features, spec.budget, spec.method, **signals, **spec.options)
    return dataclasses.replace(out, tokens=project(out.tokens).to(tokens.dtype))
