"""The model for the speed study: the shipped vision tower (trained weights) with a much larger LLaMA decoder
(random weights; speed does not depend on weight values), so that LLM prefill takes the share of a request it
takes in a 7B LLaVA. Built once into a cache folder; answers are meaningless, timings are not."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoProcessor, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from tokencomp.training.llava_hf import save_llava_hf

# 24 layers x (4 x 1024^2 attention + 3 x 1024 x 2816 MLP) = 0.31 B parameters; head size 64 (vLLM CPU supports it)
WIDTH, LAYERS, FFN, HEADS = 1024, 24, 2816, 16


def build_scaled(shipped: Path, out: Path) -> Path:
    """Write the scaled model to `out` (reused when already there) and return its path."""
    if (out / "model.safetensors").is_file():
        return out
    small = LlavaForConditionalGeneration.from_pretrained(shipped)
    text = small.config.text_config
    config = LlavaConfig(
        vision_config=small.config.vision_config,
        text_config=LlamaConfig(hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=text.vocab_size,
                                max_position_embeddings=text.max_position_embeddings, bos_token_id=text.bos_token_id,
                                eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                                tie_word_embeddings=False),
        image_token_index=small.config.image_token_index, vision_feature_layer=small.config.vision_feature_layer,
        vision_feature_select_strategy=small.config.vision_feature_select_strategy, projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(small.model.vision_tower.state_dict())
    model.generation_config = small.generation_config
    return save_llava_hf(model.eval(), out, AutoProcessor.from_pretrained(shipped))


def parameter_count(path: Path) -> dict[str, int]:
    """Parameters of the tower, projector and LLM, read from the safetensors header."""
    from safetensors import safe_open

    counts = {"vision_tower": 0, "multi_modal_projector": 0, "language_model": 0}
    with safe_open(path / "model.safetensors", "pt") as f:
        for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            counts[key.split(".")[0]] += math.prod(f.get_slice(key).get_shape())
    return counts
