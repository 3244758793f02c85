"""What TokenComp can compress and the settings a server carries in the model's config, read from a
transformers config (`hf_config` in vLLM's processes, `AutoConfig` in the CLI): no vLLM import here."""

from __future__ import annotations

from collections.abc import Mapping

from tokencomp.serving import spec
from tokencomp.serving.limits import DEFAULT_MAX_ASPECT_RATIO

LIMITS_KEY = "tokencomp_limits"  # hf_overrides key of the server's input bounds


def server_default(hf_config: object) -> spec.Spec:
    """The server-wide default spec from `--hf-overrides '{"tokencomp": {...}}'` (`tokencomp serve` sets it)."""
    raw = getattr(hf_config, spec.KEY, None)
    return spec.parse(raw, max_budget=10**9) if raw else spec.Spec()


# Methods whose definition ranks patches by the CLS token's attention (VisionZip's dominant tokens, VisPruner's
# important half); ours and MMR read any importance, the rest need none.
NEEDS_CLS = ("visionzip", "vispruner")
_TOWERS = {("clip_vision_model", "default"), ("siglip_vision_model", "full")}
QWEN = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL"}  # dynamic resolution, 2 x 2 merger, M-RoPE
# A Qwen2-VL image has at most 16384 visual tokens at its processor's default max_pixels (12845056 = 16384 x 28^2)
QWEN_MAX_IMAGE_TOKENS = 16384
_SUPPORTED = ("LLaVA (model type 'llava') with a CLIP tower ('default' features) or a SigLIP tower ('full'), "
              "Qwen2-VL ('qwen2_vl') and Qwen2.5-VL ('qwen2_5_vl')")


def unsupported_reason(hf_config: object, method: str | None = None) -> str | None:
    """Why this model's images cannot be compressed (by `method`, or at all when None); None if they can.
    Supported: LLaVA with a CLIP tower ('default' features: CLS attention is the importance) or a SigLIP tower
    ('full' features: no CLS token, so the importance is the attention each patch receives), and Qwen2-VL /
    Qwen2.5-VL images (no CLS token either; videos keep vLLM's path)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in ("llava", *QWEN):
        return (f"tokencomp compresses {_SUPPORTED}; this model's type is {model_type!r}: only method 'none' is "
                f"available")
    if model_type == "llava":
        tower = hf_config.vision_config.model_type
        strategy = hf_config.vision_feature_select_strategy
        if (tower, strategy) not in _TOWERS:
            return (f"tokencomp compresses LLaVA models with a CLIP tower (feature strategy 'default') or a SigLIP "
                    f"tower ('full'); this model has {tower!r} / {strategy!r}: only method 'none' is available")
    if not has_cls_token(hf_config) and method in NEEDS_CLS:
        tower = QWEN.get(model_type, "SigLIP")
        return (f"method {method!r} ranks patches by the CLS token's attention, and this model's {tower} tower has "
                f"no CLS token; use id_pruner, itg or mmr (importance: the attention each patch receives), "
                f"cdpruner, divprune, random, pool or first")
    return None


def has_cls_token(hf_config: object) -> bool:
    """Whether the tower puts a CLS token first (CLIP), whose attention ranks the patches; SigLIP and Qwen's
    towers have none."""
    return hf_config.model_type == "llava" and hf_config.vision_config.model_type == "clip_vision_model"


def image_tokens(hf_config: object) -> int:
    """The most visual tokens an image has before compression: the patch grid of a LLaVA tower, the largest
    Qwen2-VL image (each image has its own N there), 10^9 for models that TokenComp does not compress, whose
    budgets are refused anyway."""
    if unsupported_reason(hf_config):
        return 10**9
    if hf_config.model_type in QWEN:
        return QWEN_MAX_IMAGE_TOKENS
    vision = hf_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def max_aspect_ratio(hf_config: object) -> float:
    """The server's image aspect-ratio bound (`tokencomp serve --max-image-aspect-ratio` sets it)."""
    limits = getattr(hf_config, LIMITS_KEY, None) or {}
    return float(limits.get("max_image_aspect_ratio", DEFAULT_MAX_ASPECT_RATIO))


def resolve_request(mm_kwargs: Mapping[str, object], hf_config: object) -> spec.Spec:
    """A request's resolved spec from its `mm_processor_kwargs` (over the server default), or a SpecError naming
    the bad field: only the `tokencomp` key is accepted, and a method other than `none` must be one this model
    can apply. The API middleware (every request) and the processor (image requests) both call this."""
    other = sorted(set(mm_kwargs) - {spec.KEY})
    if other:
        raise spec.SpecError("mm_processor_kwargs", f"accepts only {spec.KEY!r} on this server; got {other}")
    resolved = spec.parse(mm_kwargs.get(spec.KEY), max_budget=image_tokens(hf_config),
                          default=server_default(hf_config))
    why = unsupported_reason(hf_config, resolved.method)
    if resolved.method != "none" and why:
        raise spec.SpecError(f"{spec.P}.method", why)
    return resolved
