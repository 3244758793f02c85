"""Random-init LLaVA checkpoints for engine tests: the llava-1.5 architecture scaled down (vLLM's CPU attention
needs LLM head_dim >= 32; CLIP ViT, patch 14, 336 px -> 576 patch tokens, feature layer -2, 'default' strategy,
2-layer GELU projector, LLaMA decoder) or the same with a SigLIP tower, a word tokenizer with a chat template,
and the tower's image processor — saved in the llava-hf layout."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from tokencomp.training.llava_hf import save_llava_hf
from tokencomp.training.tokenizer import CHAT_TEMPLATE

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = ["what", "is", "the", "colour", "shape", "of", "object", "in", "image", "left", "right", "red", "green", "blue", "yes", "no", "how", "many", "one", "two", "three", "USER:", "ASSISTANT:", "?", ".", ",", "a", "an"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_llava(path: Path, seed: int = 0, tower: str = "clip") -> Path:
    """tower "clip": the llava-1.5 layout (336 px, CLS, features from layer -2, 'default' strategy, 576 tokens);
    "siglip": a SigLIP tower as in LLaVA variants built on it (224 px, no CLS, last layer, 'full', 256 tokens)."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    if tower == "clip":
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                  image_size=336, patch_size=14, projection_dim=64)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        layer, strategy, extra_tokens = -2, "default", 1
    elif tower == "siglip":
        vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                    image_size=224, patch_size=14)
        image_processor = SiglipImageProcessor(size={"height": 224, "width": 224})
        layer, strategy, extra_tokens = -1, "full", 0
    else:
        raise ValueError(f"tower must be 'clip' or 'siglip', got {tower!r}")
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                                bos_token_id=1, eos_token_id=2, pad_token_id=3,
                                initializer_range=0.3),  # large enough that answers depend on the image
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=extra_tokens,
                               chat_template=CHAT_TEMPLATE)
    return save_llava_hf(model, path, processor)
