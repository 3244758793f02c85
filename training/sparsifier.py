"""A sparsifier owns binary masks and per-layer budgets for a set of weight tensors.

Invariants it keeps (tested in tests/test_training_sparse.py): every mask holds exactly its layer's budget of ones;
after `apply` the weights at pruned coordinates are bitwise zero (+0.0) and every optimizer-state tensor of the
weight's shape (momentum, Adam moments) is zero there too, so a regrown weight starts from a clean state.

Budgets: "uniform" gives every layer the same density; "erk" (Erdős–Rényi–Kernel, RigL, Evci et al. 2020) makes a
layer's density proportional to sum(shape) / prod(shape), capping layers that would exceed density 1 at dense and
re-spreading the rest, so the total stays at the requested density (within one weight per layer, from rounding).
"""

from __future__ import annotations

import math

import torch

DISTRIBUTIONS = ("uniform", "erk")


def layer_budgets(shapes: dict[str, torch.Size], density: float, distribution: str = "uniform") -> dict[str, int]:
    """Number of kept weights per layer for a total `density` in (0, 1]."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if distribution == "uniform":
        return {name: max(1, round(density * n)) for name, n in sizes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        # scale eps so sparse layers take what the dense ones leave of the total budget
        left = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        eps = left / sum(raw[n] * sizes[n] for n in sizes if n not in dense)
        over = {n for n in sizes if n not in dense and eps * raw[n] > 1.0}
        if not over:
            break
        dense |= over
    return {name: sizes[name] if name in dense else max(1, round(eps * raw[name] * sizes[name])) for name in sizes}


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of `scores`' shape with exactly k ones at the k largest scores (ties broken by torch.topk)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.topk(scores.flatten(), k).indices] = True
    return mask.view_as(scores)


class Sparsifier:
    """Masks for named weights. `weights`: name -> parameter ([out, in] or any shape); the initial mask per layer
    is a uniformly random set of its budget (Erdős–Rényi as in SET), drawn from `generator`."""

    def __init__(self, weights: dict[str, torch.nn.Parameter], density: float, distribution: str = "uniform",
                 generator: torch.Generator | None = None) -> None:
        self.weights = weights
        self.budgets = layer_budgets({n: w.shape for n, w in weights.items()}, density, distribution)
        self.masks = {n: top_k_mask(torch.rand(w.shape, generator=generator), self.budgets[n]).to(w.device)
                      for n, w in weights.items()}

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace one layer's mask; it must hold exactly the layer's budget."""
        nnz = int(mask.sum())
        if mask.shape != self.masks[name].shape or nnz != self.budgets[name]:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)} and {nnz} ones; expected "
                             f"{tuple(self.masks[name].shape)} and {self.budgets[name]}")
        self.masks[name] = mask.to(torch.bool)

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the weights (and the optimizer's per-weight state) at every pruned coordinate."""
        for name, weight in self.weights.items():
            pruned = ~self.masks[name]
            # multiply would leave -0.0 for negative weights; masked_fill writes +0.0, so "bitwise zero" holds
            weight.masked_fill_(pruned, 0.0)
            if optimizer is not None:
                for value in optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        value.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients at pruned coordinates so the base optimizer never moves them."""
        for name, weight in self.weights.items():
            if weight.grad is not None:
                weight.grad.masked_fill_(~self.masks[name], 0.0)

    def density(self) -> float:
        """Kept fraction over all masked weights."""
        return sum(self.budgets.values()) / sum(m.numel() for m in self.masks.values())
