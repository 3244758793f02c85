"""vLLM plugin entry point (`vllm.general_plugins`): vLLM calls `register()` in every process it starts."""

from __future__ import annotations

_ARCH = "LlavaForConditionalGeneration"
_CLASS = "tokencomp.serving.model:TokenCompLlava"


def register() -> None:
    """Serve every LLaVA checkpoint with TokenComp's model class (vanilla behaviour unless a request or the
    server asks for compression). Idempotent: re-registering the same lazy class is a no-op for vLLM."""
    from tokencomp._compat import patch_torchvision

    patch_torchvision()  # vLLM's workers import transformers' image code, which imports torchvision

    from vllm import ModelRegistry

    from tokencomp.serving.limits import install_image_guards

    install_image_guards()

    ModelRegistry.register_model(_ARCH, _CLASS)
