"""Random selection: K tokens uniformly without replacement, seeded (a strong baseline in pruning studies)."""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, selected
from tokencomp.methods import register


@register("random", uses=("seed",))
def random_select(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    # drawn on the CPU generator so that a seed keeps the same tokens on every device (N integers: negligible)
    generator = torch.Generator().manual_seed(signals.seed)
    return selected(tokens, torch.randperm(tokens.shape[0], generator=generator)[:k])
