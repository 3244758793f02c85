"""Optimizers by name: the table a recipe's `--optimizer` looks up, mapping (params, lr) to a torch optimizer.

How a step uses the optimizer (plain, SAM-family, sparse) is the step strategy's business (`sam_steps`,
`step_strategies`), so an entry here only fixes the optimizer and its hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def adamw(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW with weight decay 0.01 and β2 = 0.98 (the shipped tiny LLaVA's settings)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"adamw": adamw}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """OPTIMIZERS[name](params, lr); an unknown name raises ValueError listing the known ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr)
