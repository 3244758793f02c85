"""Random-init LLaVA-NeXT and LLaVA-OneVision checkpoints for engine tests, built offline: the released layouts
scaled down — anyres (a base view plus the tiles of the best-fitting grid pinpoint, with an `image_newline` row
end) over 112 px views (8 x 8 patches of 14 px per view), LLaVA-NeXT with a CLIP tower (feature layer -2,
'default') and a LLaMA decoder, LLaVA-OneVision with a SigLIP tower (last layer, 'full', anyres_max_9) and a
Qwen2 decoder — with head_dim 32 (the smallest vLLM's CPU attention supports), the word tokenizer of
`tests/llava_fixture.py` and the family's own image processor, saved in the llava-hf key layout."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

from tests.llava_fixture import make_tokenizer
from tokencomp.training.llava_hf import llava_hf_key, save_llava_hf
from tokencomp.training.tokenizer import CHAT_TEMPLATE

VIEW = 112  # px of the base view and of each tile
PINPOINTS = [[VIEW, 2 * VIEW], [2 * VIEW, VIEW], [2 * VIEW, 2 * VIEW]]  # the tile grids anyres chooses from
FAMILIES = ("llava_next", "llava_onevision")


def make_llava_next(path: Path, family: str = "llava_next", seed: int = 0) -> Path:
    """family: "llava_next" (CLIP + LLaMA) or "llava_onevision" (SigLIP + Qwen2)."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
            "initializer_range": 0.3}  # large enough that answers depend on the image
    tower = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
             "image_size": VIEW, "patch_size": 14}
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if family == "llava_next":
        config = LlavaNextConfig(vision_config=CLIPVisionConfig(**tower, projection_dim=64),
                                 text_config=LlamaConfig(**text), image_token_index=image_token,
                                 image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                                 vision_feature_select_strategy="default")
        model = LlavaNextForConditionalGeneration(config).eval()
        image_processor = LlavaNextImageProcessor(size={"shortest_edge": VIEW}, crop_size={"height": VIEW, "width": VIEW},
                                                  image_grid_pinpoints=PINPOINTS)
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=CHAT_TEMPLATE)
    elif family == "llava_onevision":
        # the word tokenizer has no <video>; the image token stands in (no test sends a video)
        config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**tower), text_config=Qwen2Config(**text),
                                      image_token_index=image_token, video_token_index=image_token,
                                      image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1,
                                      vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
        model = LlavaOnevisionForConditionalGeneration(config).eval()
        size = {"height": VIEW, "width": VIEW}
        image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS)
        processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                            video_processor=LlavaOnevisionVideoProcessor(size=size),
                                            num_image_tokens=(VIEW // 14) ** 2, vision_feature_select_strategy="full",
                                            vision_aspect_ratio="anyres_max_9", video_token="<image>",
                                            chat_template=CHAT_TEMPLATE)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    state = {_key(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    return save_llava_hf(model, path, processor, state=state)


def _key(name: str) -> str:
    """llava-hf name of a NeXT / OneVision parameter: LLaVA's, plus the row-end embedding."""
    return "image_newline" if name == "model.image_newline" else llava_hf_key(name)
