"""Step strategies by name: what a recipe's `--step base|sam|s2sam|zosam` builds from `sam_steps`.

A recipe's loop calls `strategy.step(loss_fn)` once per batch, where `loss_fn()` runs the forward pass on that
batch and returns the scalar loss; the strategy owns zero_grad, backward, any weight perturbation and the
optimizer step, so the loop is the same for every strategy. `base` is the plain zero_grad / backward / step.
"""

from __future__ import annotations

import torch

from tokencomp.training.sam_steps import BaseStep, S2SAMStep, SAMStep, ZOSAMStep
from tokencomp.training.sparsifier import Sparsifier

STEPS = ("base", "sam", "s2sam", "zosam")


def make_step(name: str, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, *,
              rho: float | None = None, q: int = 1, mu: float = 1e-3, seed: int = 0,
              sparsifier: Sparsifier | None = None) -> BaseStep:
    """The strategy `name` over `params` (those the optimizer trains). rho None: the strategy's own default
    (SAM and ZO-SAM 0.05, S2-SAM 0.5; `base` takes none); q, mu, seed: ZO-SAM's directions per step, smoothing
    radius and direction seed (ignored by the others)."""
    if name not in STEPS:
        raise ValueError(f"unknown step {name!r}; available: {', '.join(STEPS)}")
    if name == "base":
        if rho is not None:
            raise ValueError(f"the base step takes no rho, got {rho}")
        return BaseStep(params, optimizer, sparsifier)
    radius = {} if rho is None else {"rho": rho}
    if name == "sam":
        return SAMStep(params, optimizer, sparsifier=sparsifier, **radius)
    if name == "s2sam":
        return S2SAMStep(params, optimizer, sparsifier=sparsifier, **radius)
    return ZOSAMStep(params, optimizer, q=q, mu=mu, seed=seed, sparsifier=sparsifier, **radius)
