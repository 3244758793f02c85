"""Prune-and-grow mask updates for dynamic sparse training: SET and RigL.

Both keep each layer's budget exactly: drop the n active weights of smallest magnitude, grow n inactive ones. Grown
weights start at exactly zero (the network function does not change at the growth instant) with zero optimizer
state; `Sparsifier.apply` enforces both. Positions dropped in this update may be regrown in it (RigL's candidates
are all inactive positions after the drop).

- `SETUpdate` (Mocanu et al., Nature Communications 2018): drop fraction ζ by magnitude, grow uniformly at random;
  called by the recipe once per epoch.
- `RigLUpdate` (Evci et al., ICML 2020): every ΔT steps until `stop_fraction` (75 %) of training, drop
  f(t) = α/2 (1 + cos(π t / T_end)) of each layer's active weights by magnitude and grow the same number with the
  largest dense-gradient magnitude. Call it after backward and before `Sparsifier.mask_grads`, while `.grad`
  still holds the dense gradient (the weight is stored dense with zeros, so autograd fills every coordinate).
"""

from __future__ import annotations

import math

import torch

from tokencomp.training.sparsifier import Sparsifier


@torch.no_grad()
def prune_and_grow(sparsifier: Sparsifier, name: str, n: int, grow_scores: torch.Tensor) -> None:
    """Drop layer `name`'s n smallest-|w| active weights, grow the n inactive ones with the largest `grow_scores`."""
    mask = sparsifier.masks[name]
    n = min(n, int(mask.sum()), mask.numel() - int(mask.sum()))
    if n <= 0:
        return
    weight = sparsifier.weights[name].detach()
    magnitude = weight.abs().masked_fill(~mask, math.inf).flatten()
    kept = mask.flatten().clone()
    kept[torch.topk(magnitude, n, largest=False).indices] = False
    candidates = grow_scores.detach().flatten().to(torch.float32).masked_fill(kept, -math.inf)
    kept[torch.topk(candidates, n).indices] = True
    sparsifier.set_mask(name, kept.view_as(mask))


class SETUpdate:
    """SET: per layer, replace `zeta` of the active weights, magnitude drop and random grow."""

    def __init__(self, zeta: float = 0.3, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= zeta <= 1.0:
            raise ValueError(f"zeta must be in [0, 1], got {zeta}")
        self.zeta = zeta
        self.generator = generator

    def __call__(self, sparsifier: Sparsifier, optimizer: torch.optim.Optimizer | None = None) -> None:
        for name, mask in sparsifier.masks.items():
            scores = torch.rand(mask.shape, generator=self.generator).to(mask.device)
            prune_and_grow(sparsifier, name, round(self.zeta * sparsifier.budgets[name]), scores)
        sparsifier.apply(optimizer)


class RigLUpdate:
    """RigL with update interval `delta_t`, initial fraction `alpha`, over `total_steps` of training."""

    def __init__(self, total_steps: int, delta_t: int = 100, alpha: float = 0.3, stop_fraction: float = 0.75
                 ) -> None:
        if delta_t < 1 or total_steps < 1:
            raise ValueError(f"need delta_t >= 1 and total_steps >= 1, got {delta_t}, {total_steps}")
        self.delta_t, self.alpha = delta_t, alpha
        self.end = int(stop_fraction * total_steps)

    def fraction(self, step: int) -> float:
        """Cosine-decayed update fraction at `step`; 0 from the stop step on."""
        if step >= self.end:
            return 0.0
        return self.alpha / 2 * (1 + math.cos(math.pi * step / self.end))

    def due(self, step: int) -> bool:
        return step > 0 and step % self.delta_t == 0 and step < self.end

    def __call__(self, step: int, sparsifier: Sparsifier, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Update the masks if `step` is an update step; returns whether it was."""
        if not self.due(step):
            return False
        fraction = self.fraction(step)
        for name, weight in sparsifier.weights.items():
            if weight.grad is None:
                raise ValueError(f"RigL needs the dense gradient of {name!r}; call it after backward")
            prune_and_grow(sparsifier, name, round(fraction * sparsifier.budgets[name]), weight.grad.abs())
        sparsifier.apply(optimizer)
        return True
