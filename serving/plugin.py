"""vLLM plugin entry point (`vllm.general_plugins`): vLLM calls `register()` in every process it starts."""

from __future__ import annotations

# vLLM architecture -> TokenComp's model class (one adapter module per family); other architectures are untouched
MODELS = {
    "LlavaForConditionalGeneration": "tokencomp.serving.model:TokenCompLlava",
    "Qwen2VLForConditionalGeneration": "tokencomp.serving.qwen2_vl:TokenCompQwen2VL",
    "Qwen2_5_VLForConditionalGeneration": "tokencomp.serving.qwen2_vl:TokenCompQwen2_5VL",
}


def register() -> None:
    """Serve every checkpoint of a family in MODELS with TokenComp's model class (vanilla behaviour unless a
    request or the server asks for compression). Idempotent: re-registering the same lazy class is a no-op."""
    from tokencomp._compat import patch_torchvision

    patch_torchvision()  # vLLM's workers import transformers' image code, which imports torchvision

    from vllm import ModelRegistry

    from tokencomp.serving.limits import install_image_guards

    install_image_guards()

    for architecture, model_class in MODELS.items():
        ModelRegistry.register_model(architecture, model_class)
