"""`none`: the unmodified model; every token passes (the dispatcher returns the input for this name)."""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals
from tokencomp.methods import register


@register("none")
def none(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    return Compressed(tokens=tokens, index=torch.arange(tokens.shape[0], device=tokens.device))
