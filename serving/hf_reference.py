"""The same compression in transformers: the reference the served path is checked against, token for token.

Features, CLS attention and keys come from transformers' CLIP (hidden states + the feature layer's q/k); the
kept tokens come from the same `compress_image` the vLLM model calls; generation is greedy on inputs_embeds.
"""

from __future__ import annotations

import torch
from PIL import Image
from tokencomp.serving.compression import compress_image, vision_signals
from tokencomp.serving.spec import Spec

from tokencomp.signals import qk_from_hf_clip_layer


@torch.no_grad()
def compressed_image_tokens(model, pixel_values: torch.Tensor, spec: Spec, text_ids: torch.Tensor) -> torch.Tensor:
    """[K, D] LLM-input rows for one image [1, 3, H, W] of a transformers `LlavaForConditionalGeneration`."""
    config = model.config
    layer_idx = config.vision_feature_layer
    tower = model.model.vision_tower
    hidden = tower(pixel_values.to(model.dtype), output_hidden_states=True).hidden_states
    layer = tower.encoder.layers[layer_idx]
    q, k = qk_from_hf_clip_layer(layer, hidden[layer_idx - 1][0])
    cls_attn, keys = vision_signals(q, k, layer.self_attn.num_heads)
    projected = model.model.multi_modal_projector(hidden[layer_idx][:, 1:])[0]
    side = config.vision_config.image_size // config.vision_config.patch_size
    text = model.get_input_embeddings()(text_ids) if spec.uses_text() else None
    return compress_image(projected, spec, cls_attn=cls_attn, keys=keys, grid=(side, side), text=text).tokens


@torch.no_grad()
def generate(model, processor, image: Image.Image, question: str, spec: Spec, max_new_tokens: int = 8) -> str:
    """Greedy answer of `model` to a one-image chat question under `spec`."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids[0]
    image_token = model.config.image_token_index
    (pos,) = (ids == image_token).nonzero()[0].tolist()
    pixel_values = processor.image_processor(image, return_tensors="pt").pixel_values
    rows = compressed_image_tokens(model, pixel_values, spec, ids[ids != image_token])
    embed = model.get_input_embeddings()
    inputs_embeds = torch.cat([embed(ids[:pos]), rows.to(embed.weight.dtype), embed(ids[pos + 1:])])[None]
    out = model.generate(inputs_embeds=inputs_embeds, attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0], skip_special_tokens=True)
