"""The same compression in transformers for Qwen2-VL / Qwen2.5-VL: the reference the served path is checked
against. The tower, merger and M-RoPE come from transformers' own code: the last block's q, k are recomputed
from that block's input (a forward pre-hook) with transformers' rotary function, the kept rows come from the
same `compress_image` the vLLM model calls, and the positions are transformers' `get_rope_index` of the
uncompressed prompt with the dropped tokens' columns removed (the definition `serving.qwen2_vl` implements
with its own code). Generation is greedy, one full forward a token (a tiny model: no cache needed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from PIL import Image

from tokencomp.base import Compressed
from tokencomp.serving.compression import compress_image, merged_signals, template_edges
from tokencomp.serving.spec import Spec
from tokencomp.signals import question_ids


@dataclass
class QwenAnswer:
    tokens: list[int]  # greedy token ids
    logprobs: list[dict[int, float]]  # top-5 log-probabilities at each step
    prompt_tokens: int
    compressed: Compressed  # what the language model saw of the image


def _last_block_qk(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [S, H*Dh] of the tower's last block for one image, in the processor's patch order."""
    visual = model.model.visual
    attn = visual.blocks[-1].attn
    seen = {}

    def keep(_module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["cos_sin"] = kwargs["position_embeddings"]

    handle = attn.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        visual(pixel_values, grid_thw=grid_thw)
    finally:
        handle.remove()
    hidden = seen["hidden"]
    s = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(s, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotate = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb_vision
    q, k = rotate(q, k, *seen["cos_sin"])
    if model.config.model_type == "qwen2_5_vl":  # undo the window order of the merged units
        window = importlib.import_module(type(visual).__module__).get_vision_window_index(
            grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size, kwargs={})[0]
        unit = visual.spatial_merge_size**2
        q, k = (x.reshape(-1, unit, *x.shape[1:])[torch.argsort(window)].reshape(x.shape) for x in (q, k))
    return q.flatten(1), k.flatten(1)


@torch.no_grad()
def answer(model, processor, image: Image.Image, question: str, spec: Spec, max_new_tokens: int = 5) -> QwenAnswer:
    """Greedy answer of a transformers Qwen2-VL / Qwen2.5-VL `model` to a one-image chat question under `spec`
    (its budget already resolved to this image's count)."""
    config = model.config
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    ids = inputs.input_ids[0]
    grid_thw = inputs.image_grid_thw
    visual = model.model.visual
    tokens = visual(inputs.pixel_values.to(model.dtype), grid_thw=grid_thw).pooler_output  # [N, D]
    q, k = _last_block_qk(model, inputs.pixel_values.to(model.dtype), grid_thw)
    unit = visual.spatial_merge_size**2
    importance, keys = merged_signals(q, k, config.vision_config.num_heads, unit)
    t, h, w = (grid_thw[0] // torch.tensor([1, visual.spatial_merge_size, visual.spatial_merge_size])).tolist()
    text = None
    if spec.uses_text():
        text_ids = question_ids(ids.tolist(), *template_edges(processor), config.image_token_id)
        text = model.get_input_embeddings()(torch.tensor(text_ids))
    compressed = compress_image(tokens, spec, cls_attn=importance, keys=keys, features=None, project=None,
                                grid=(t * h, w), text=text)
    positions, _ = model.model.get_rope_index(inputs.input_ids, mm_token_type_ids=inputs.mm_token_type_ids,
                                              image_grid_thw=grid_thw, attention_mask=inputs.attention_mask)
    image_rows = (ids == config.image_token_id).nonzero().squeeze(1)
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[image_rows] = False
    keep[image_rows[compressed.index]] = True
    embeds = model.get_input_embeddings()(ids)
    embeds[image_rows[compressed.index]] = compressed.tokens.to(embeds.dtype)
    embeds, positions = embeds[keep][None], positions[:, :, keep]
    out, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = model(inputs_embeds=embeds, position_ids=positions,
                       attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)).logits[0, -1].float()
        top = logits.log_softmax(-1).topk(5)
        logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
        token = int(top.indices[0])
        out.append(token)
        embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
        positions = torch.cat([positions, positions[:, :, -1:] + 1], dim=2)
    return QwenAnswer(tokens=out, logprobs=logprobs, prompt_tokens=int(keep.sum()), compressed=compressed)
