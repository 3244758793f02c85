"""The shipped tiny LLaVA's shape (`build_model`): a CLIP ViT tower, a 2-layer GELU projector, a LLaMA
decoder."""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from tokencomp.training import scenes


def build_model(vocab_size: int, *, image_token_id: int, pad_id: int, bos_id: int, eos_id: int,
                vision_width: int = 128, vision_layers: int = 5, text_width: int = 128, text_layers: int = 4
                ) -> LlavaForConditionalGeneration:
    """The shipped shape: CLIP ViT (patch 14, 336 px -> 576 patches + CLS, features from layer -2), 2-layer GELU
    projector, LLaMA decoder. LLM heads are 32 wide: vLLM's CPU attention supports head sizes 32, 64, 80, ..."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vision_width, intermediate_size=4 * vision_width,
                                       num_hidden_layers=vision_layers, num_attention_heads=vision_width // 32,
                                       image_size=scenes.SIZE, patch_size=scenes.PATCH, projection_dim=vision_width),
        text_config=LlamaConfig(hidden_size=text_width, intermediate_size=3 * text_width,
                                num_hidden_layers=text_layers, num_attention_heads=text_width // 32,
                                num_key_value_heads=text_width // 32, vocab_size=vocab_size,
                                max_position_embeddings=1024, bos_token_id=bos_id, eos_token_id=eos_id,
                                pad_token_id=pad_id, tie_word_embeddings=False),
        image_token_index=image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)
