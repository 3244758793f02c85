"""Small deterministic token sets with every signal a method may read."""

from __future__ import annotations

import torch


def make_signals(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """tokens [n, d] with structure (clusters + noise) and every signal; n must be a square."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g)
    tokens = centres[torch.randint(0, 8, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    signals = {
        "cls_attn": torch.rand(n, generator=g).softmax(0),
        "text": torch.randn(5, d, generator=g),
        "keys": torch.randn(n, d, generator=g),
    }
    return tokens, signals
