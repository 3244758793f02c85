"""Several optimizers stepped as one, with an optional clip of the gradient norm over all their parameters.

A step strategy (`sam_steps`) drives one optimizer. A recipe that trains two parameter sets with optimizers of
their own (a model and a training-only probe) and clips their joint gradient norm hands the strategy an
`OptimizerGroup` instead: the strategy's `zero_grad` / `step` / `state` reach every member.

`zero_grad` always resets gradients to None (PyTorch's default), whatever `set_to_none` asks for. A
parameter that gets no gradient in a step (a probe head whose targets the batch lacks) is then skipped by the
optimizer (for AdamW: no weight decay, no moment decay), exactly as in the plain `zero_grad(); backward();
step()` loop; zeroed gradients would instead decay it. Gradient clipping and the strategies all treat a None
gradient as zero.
"""

from __future__ import annotations

from collections import ChainMap

import torch


class OptimizerGroup:
    """`optimizers` step in the given order; with `max_grad_norm`, their gradients are first scaled
    together so the norm over all parameters (in optimizer, then parameter-group order) is at most that
    value."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], max_grad_norm: float | None = None) -> None:
        if not optimizers:
            raise ValueError("OptimizerGroup needs at least one optimizer, got none")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.optimizers = optimizers
        self.max_grad_norm = max_grad_norm

    @property
    def param_groups(self) -> list[dict]:
        """Every member's parameter groups (set a learning rate on all of them through this list)."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> ChainMap:
        """Per-parameter optimizer state of every member (a parameter belongs to one member)."""
        return ChainMap(*(opt.state for opt in self.optimizers))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every gradient to None; `set_to_none=False` is not honoured (see the module docstring)."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.max_grad_norm is not None:
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        for opt in self.optimizers:
            opt.step()
