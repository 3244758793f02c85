"""Parts of a transformers LLaVA (`LlavaForConditionalGeneration`, CLIP-style tower) that recipes train, read
or mask: the tower's feature-layer output, and the linear weights of the projector and the language model."""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration


def tower_hidden(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Output [B, 1 + N, Dv] (CLS first) of the feature layer. Layers after it are skipped: their output is
    never used (vLLM does not even build them), so training them would only cost time."""
    vision = model.model.vision_tower
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    layers = vision.encoder.layers
    for layer in layers[:len(layers) + 1 + model.config.vision_feature_layer]:
        hidden = layer(hidden, None)
    return hidden


def tower_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features [B, N, Dv] of the feature layer, CLS dropped: what the projector receives."""
    return tower_hidden(model, pixel_values)[:, 1:]


def linear_weights(model: LlavaForConditionalGeneration) -> dict[str, torch.nn.Parameter]:
    """Weight [out, in] of every linear layer in the projector and the decoder layers, by parameter name (the
    weights a sparse run masks; embeddings, norms and the LM head stay dense)."""
    prefixes = ("model.multi_modal_projector.", "model.language_model.layers.")
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if name.startswith(prefixes) and isinstance(module, torch.nn.Linear)}
