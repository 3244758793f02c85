"""The model: vLLM's LLaVA with an `embed_multimodal` that returns K rows per image, chosen by tokencomp.

Runs in the engine process. The vision tower runs layer by layer so that the feature layer's q/k can be read
(vLLM's fused attention never materialises attention weights); everything the spec needs was validated by the
processor in the API server, so nothing here raises on user input.
"""

from __future__ import annotations

import logging
import os

import torch
from vllm.distributed import get_tensor_model_parallel_rank, tensor_model_parallel_all_reduce
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from tokencomp.serving import spec
from tokencomp.serving.compression import compress_image, vision_signals
from tokencomp.serving.model_support import has_cls_token
from tokencomp.serving.processor import TokenCompLlavaProcessor
from tokencomp.signals import qk_from_fused_qkv

TC_FIELDS = ("tc_spec", "tc_options", "tc_text_ids")  # what the processor adds to an image's kwargs
logger = logging.getLogger("vllm.tokencomp")  # under vLLM's logger, so its handler prints it
# TOKENCOMP_LOG_KEPT=1: every rank logs each image's kept indices (for consistency checks across ranks and engines)
LOG_KEPT = os.environ.get("TOKENCOMP_LOG_KEPT") == "1"


def finite_rows(tokens: torch.Tensor, kept: torch.Tensor, index: torch.Tensor, what: str) -> torch.Tensor:
    """`kept` [K, D] if every value is finite, else the plain selection tokens[index] [K, D].

    Requests share engine batches and KV-cache blocks, so a NaN or inf row reaching the language model can
    corrupt other users' answers. Options are validated so that this cannot happen; this is the last line."""
    if torch.isfinite(kept).all():
        return kept
    logger.error("tokencomp: %s produced non-finite tokens; serving the plain selection of its kept indices", what)
    return tokens[index.to(tokens.device)]


def image_specs(kwargs: dict) -> tuple[dict, list[spec.Spec] | None]:
    """Pops the processor's fields off an `embed_multimodal` call's kwargs: (those fields, each image's spec),
    the specs None when vLLM's own path serves the call (no pixels, or every image of method 'none')."""
    tc = {name: kwargs.pop(name, None) for name in TC_FIELDS}
    if tc["tc_spec"] is None or kwargs.get("pixel_values") is None:
        return tc, None
    specs = [spec.decode(ints, opts) for ints, opts in zip(tc["tc_spec"], tc["tc_options"])]
    return tc, None if all(s.method == "none" for s in specs) else specs


@MULTIMODAL_REGISTRY.register_processor(
    TokenCompLlavaProcessor, info=LlavaProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class TokenCompLlava(LlavaForConditionalGeneration):
    """Every LLaVA checkpoint is served by this class once the plugin is installed; images of method 'none' (the
    default) go through vLLM's own `embed_multimodal` / tower call unchanged, so any LLaVA variant vLLM serves
    is still served. The processor lets other methods through for CLIP towers ('default' features) and SigLIP
    towers ('full'), refusing on SigLIP the methods defined by CLS attention."""

    def embed_multimodal(self, **kwargs: object):
        tc, specs = image_specs(kwargs)
        if specs is None:
            return super().embed_multimodal(**kwargs)  # vLLM's own path: same tower call, nothing extra
        pixel_values = self._parse_and_validate_image_input(**kwargs)["pixel_values"]
        plain = [b for b, s in enumerate(specs) if s.method == "none"]
        chosen = [b for b, s in enumerate(specs) if s.method != "none"]
        out: list[torch.Tensor | None] = [None] * len(specs)
        if plain:  # images of 'none' requests batched with compressed ones still take vLLM's path
            features = self._image_pixels_to_features(self.vision_tower, torch.stack([pixel_values[b] for b in plain]))
            for b, rows in zip(plain, self.multi_modal_projector(features)):
                out[b] = rows
        features, cls_attn, keys = self._tower_with_signals(torch.stack([pixel_values[b] for b in chosen]))
        projected = self.multi_modal_projector(features)  # [B', N, D]
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        for i, b in enumerate(chosen):
            text = None
            if specs[b].uses_text():
                text = self.language_model.embed_input_ids(tc["tc_text_ids"][b].to(projected.device))
            compressed = compress_image(projected[i], specs[b], cls_attn=cls_attn[i], keys=keys[i],
                                        features=features[i], project=self.multi_modal_projector,
                                        grid=(side, side), text=text)
            out[b] = finite_rows(projected[i], compressed.tokens, compressed.index, repr(specs[b]))
            if LOG_KEPT:
                logger.info("tokencomp: rank=%d method=%s kept=%s", get_tensor_model_parallel_rank(), specs[b].method,
                            ",".join(map(str, compressed.index.tolist())))
        return out

    def _tower_with_signals(self, pixel_values: torch.Tensor):
        """(patch features [B, N, Dv], importance [B, N], head-mean keys [B, N, Dh]) of the feature layer, which
        is the last layer vLLM instantiates (the tower is truncated at vision_feature_layer). CLIP: CLS first,
        CLS attention as importance; SigLIP: no CLS, the attention each patch receives."""
        tower = self.vision_tower.vision_model
        has_cls = has_cls_token(self.config)
        hidden = tower.embeddings(pixel_values.to(tower.dtype))
        if has_cls:
            hidden = tower.pre_layrnorm(hidden)
        *layers, feature_layer = tower.encoder.layers
        for layer in layers:
            hidden = _hidden(layer(hidden))
        local_heads = feature_layer.self_attn.num_heads_per_partition
        signals = [vision_signals(*qk_from_fused_qkv(feature_layer, h), local_heads, has_cls=has_cls) for h in hidden]
        cls_attn, keys = torch.stack([s[0] for s in signals]), torch.stack([s[1] for s in signals])
        total_heads = self.config.vision_config.num_attention_heads
        if local_heads < total_heads:
            cls_attn, keys = all_heads_mean(cls_attn, keys, local_heads, total_heads)
        hidden = _hidden(feature_layer(hidden))
        return (hidden[:, 1:] if has_cls else hidden), cls_attn, keys


def _hidden(out: torch.Tensor | tuple) -> torch.Tensor:
    """A vLLM encoder layer's hidden states (SigLIP's layers return them with a second, unused value)."""
    return out[0] if isinstance(out, tuple) else out


def all_heads_mean(cls_attn: torch.Tensor, keys: torch.Tensor, local_heads: int, total_heads: int):
    """Under tensor parallelism each rank holds `local_heads` of the tower's heads, so its head means differ from
    the other ranks'; summing the local sums over ranks gives every rank the mean over all heads, and so the
    same kept tokens (otherwise ranks would feed the language model different inputs)."""
    stacked = torch.cat([cls_attn[..., None], keys], dim=-1) * local_heads
    stacked = tensor_model_parallel_all_reduce(stacked.contiguous()) / total_heads
    return stacked[..., 0], stacked[..., 1:]
