"""The same compression in transformers: the reference the served path is checked against, token for token.

Features, CLS attention and keys come from transformers' CLIP or SigLIP tower (hidden states + the feature
layer's q/k; without a CLS token the importance is the attention each patch receives); the
kept tokens come from the same `compress_image` the vLLM model calls; generation is greedy on inputs_embeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from tokencomp.base import Compressed
from tokencomp.serving.compression import compress_image, template_edges, vision_signals
from tokencomp.serving.model_support import has_cls_token
from tokencomp.serving.spec import Spec
from tokencomp.signals import qk_from_hf_clip_layer, question_ids


@torch.no_grad()
def compress_pixels(model, pixel_values: torch.Tensor, spec: Spec, text_ids: torch.Tensor) -> Compressed:
    """The K LLM-input rows (and which patches they came from) for one image [1, 3, H, W] of a transformers
    `LlavaForConditionalGeneration`; `text_ids` are the prompt's non-image token ids."""
    config = model.config
    layer_idx = config.vision_feature_layer
    tower = model.model.vision_tower
    hidden = tower(pixel_values.to(model.dtype), output_hidden_states=True).hidden_states
    layer = tower.encoder.layers[layer_idx]
    q, k = qk_from_hf_clip_layer(layer, hidden[layer_idx - 1][0])
    has_cls = has_cls_token(config)
    cls_attn, keys = vision_signals(q, k, layer.self_attn.num_heads, has_cls=has_cls)
    features = hidden[layer_idx][:, 1:] if has_cls else hidden[layer_idx]
    projected = model.model.multi_modal_projector(features)[0]
    side = config.vision_config.image_size // config.vision_config.patch_size
    text = model.get_input_embeddings()(text_ids) if spec.uses_text() else None
    return compress_image(projected, spec, cls_attn=cls_attn, keys=keys, features=features[0],
                          project=model.model.multi_modal_projector, grid=(side, side), text=text)


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    compressed: Compressed  # what the language model saw of the image


def prompt_ids(processor, question: str) -> torch.Tensor:
    """Token ids [L] of a one-image chat prompt (the chat template vLLM's server applies too)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids[0]


def compress_image_for_question(model, processor, image: Image.Image, question: str, spec: Spec) -> Compressed:
    ids = question_ids(prompt_ids(processor, question).tolist(), *template_edges(processor),
                       model.config.image_token_index)
    pixel_values = processor.image_processor(image, return_tensors="pt").pixel_values
    return compress_pixels(model, pixel_values, spec, torch.tensor(ids, dtype=torch.long))


@torch.no_grad()
def answer(model, processor, image: Image.Image, question: str, spec: Spec, max_new_tokens: int = 8) -> Answer:
    """Greedy answer of `model` to a one-image chat question under `spec`."""
    ids = prompt_ids(processor, question)
    (pos,) = (ids == model.config.image_token_index).nonzero()[0].tolist()
    compressed = compress_image_for_question(model, processor, image, question, spec)
    embed = model.get_input_embeddings()
    inputs_embeds = torch.cat([embed(ids[:pos]), compressed.tokens.to(embed.weight.dtype), embed(ids[pos + 1:])])[None]
    mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
    out = model.generate(inputs_embeds=inputs_embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                         do_sample=False)
    text = processor.tokenizer.decode(out[0], skip_special_tokens=True)
    return Answer(text=text, prompt_tokens=inputs_embeds.shape[1], compressed=compressed)
