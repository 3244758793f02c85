"""What TokenComp can compress and the settings a server carries in the model's config, read from a
transformers config (`hf_config` in vLLM's processes, `AutoConfig` in the CLI): no vLLM import here."""

from __future__ import annotations

from tokencomp.serving import spec
from tokencomp.serving.limits import DEFAULT_MAX_ASPECT_RATIO

LIMITS_KEY = "tokencomp_limits"  # hf_overrides key of the server's input bounds


def server_default(hf_config: object) -> spec.Spec:
    """The server-wide default spec from `--hf-overrides '{"tokencomp": {...}}'` (`tokencomp serve` sets it)."""
    raw = getattr(hf_config, spec.KEY, None)
    return spec.parse(raw, max_budget=10**9) if raw else spec.Spec()


def unsupported_reason(hf_config: object) -> str | None:
    """Why this model's images cannot be compressed (None if they can): CLS attention needs a CLIP tower."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "llava":
        return (f"tokencomp compresses LLaVA models (model type 'llava') with a CLIP vision tower; this model's "
                f"type is {model_type!r}: only method 'none' is available")
    tower = hf_config.vision_config.model_type
    strategy = hf_config.vision_feature_select_strategy
    if tower != "clip_vision_model" or strategy != "default":
        return (f"tokencomp compresses LLaVA models with a CLIP vision tower and feature strategy 'default'; this "
                f"model has {tower!r} / {strategy!r}: only method 'none' is available")
    return None


def image_tokens(hf_config: object) -> int:
    """Visual tokens per image before compression (the patch grid of a LLaVA tower; 10^9 for models that
    TokenComp does not compress, whose budgets are refused anyway)."""
    if unsupported_reason(hf_config):
        return 10**9
    vision = hf_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def max_aspect_ratio(hf_config: object) -> float:
    """The server's image aspect-ratio bound (`tokencomp serve --max-image-aspect-ratio` sets it)."""
    limits = getattr(hf_config, LIMITS_KEY, None) or {}
    return float(limits.get("max_image_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO))
