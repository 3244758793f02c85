"""Save a transformers LLaVA model in the llava-hf key layout, which both transformers and vLLM load.

transformers 5 writes `model.vision_tower.encoder...`; vLLM (and every llava-hf checkpoint) expects
`vision_tower.vision_model.encoder...` (README: Known setup traps).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

_PREFIXES = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def llava_hf_key(name: str) -> str:
    """Map one transformers-5 parameter name to its llava-hf name."""
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"unexpected LLaVA parameter name {name!r}")


def save_llava_hf(model: torch.nn.Module, path: str | Path, processor=None,
                  state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config, weights (llava-hf keys, one safetensors file; `state` if given: tensors already under
    their checkpoint names) and, if given, the processor to `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # engines pick the model class by this name
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    if state is None:
        state = {llava_hf_key(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    if processor is not None:
        processor.save_pretrained(path)
    return path
