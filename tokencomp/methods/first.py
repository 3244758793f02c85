"""The first K tokens in raster order: a zero-cost selection. `bench serve` runs it at every budget as the
oracle of what K tokens save in the engine, so that achieved / ideal is the price of choosing well."""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals
from tokencomp.methods import register


@register("first")
def first(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    return Compressed(tokens=tokens[:k], index=torch.arange(k, device=tokens.device))
