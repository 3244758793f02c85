"""BiDST (Ji et al., ICML 2024): dynamic sparse training as a bi-level problem, masks above, weights below.

Upper level: choose per-layer top-k masks m minimising L(m ⊙ θ*(m)); lower level: θ*(m) = argmin_θ L(m ⊙ θ)
+ γ/2 ‖θ‖². With z = m ⊙ θ and g = ∂L/∂z, dropping the loss Hessian from the implicit-function derivative gives
dθ*/dm ≈ −g/γ, so the first-order mask hypergradient is

    h = θ ⊙ g − (1/γ) (m ⊙ g) ⊙ g = g ⊙ (θ − (m ⊙ g) / γ).

Continuous scores s descend h (s ← s − η_s h) every step, and every `interval` steps the mask becomes the exact
per-layer top-k of s. The authors released no code; the choices below are ours, each a flag:

- θ at pruned coordinates: the model's weight is bitwise zero there (Sparsifier invariant), so a dense "latent"
  copy keeps each pruned weight's last active value (initially the weight before the first mask); h uses it.
- scores start at |θ| of the latent copy.
- `hysteresis`: a margin added to active scores before the top-k, so an inactive weight must beat the weakest
  active one by it to swap in (stops flip-flopping at ties).
- `reactivate`: "zero" (a grown weight starts at 0, as in RigL) or "latent" (it resumes its stored value).
- The dense gradient is read every step (the whole `.grad`, before `Sparsifier.mask_grads`), i.e. the variant
  with no backward FLOP saving; the lower level's γ is the base optimizer's weight decay (the recipe sets it).
"""

from __future__ import annotations

import torch

from tokencomp.training.sparsifier import Sparsifier, top_k_mask

REACTIVATE = ("zero", "latent")


def mask_hypergradient(theta: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, gamma: float) -> torch.Tensor:
    """h = g ⊙ (θ − (m ⊙ g)/γ); all tensors one layer's shape, `grad` = ∂L/∂(m ⊙ θ)."""
    return grad * (theta - mask.to(grad.dtype) * grad / gamma)


class BiDSTUpdate:
    """Score updates and top-k projections for the sparsifier's layers. Build it before the first
    `Sparsifier.apply` so the latent copy holds the initial dense weights."""

    def __init__(self, sparsifier: Sparsifier, gamma: float = 5e-4, score_lr: float = 0.1, interval: int = 100,
                 hysteresis: float = 0.0, reactivate: str = "zero") -> None:
        if gamma <= 0 or interval < 1:
            raise ValueError(f"need gamma > 0 and interval >= 1, got gamma={gamma}, interval={interval}")
        if reactivate not in REACTIVATE:
            raise ValueError(f"reactivate must be one of {REACTIVATE}, got {reactivate!r}")
        self.sparsifier = sparsifier
        self.gamma, self.score_lr, self.interval = gamma, score_lr, interval
        self.hysteresis, self.reactivate = hysteresis, reactivate
        self.latent = {n: w.detach().clone() for n, w in sparsifier.weights.items()}
        self.scores = {n: t.abs() for n, t in self.latent.items()}
        self.turnover: list[int] = []

    def theta(self, name: str) -> torch.Tensor:
        """θ of one layer: the live weight where active, the stored latent value where pruned."""
        return torch.where(self.sparsifier.masks[name], self.sparsifier.weights[name].detach(), self.latent[name])

    @torch.no_grad()
    def __call__(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Score step from the current dense gradients; projection on interval steps. Returns whether masks moved."""
        for name, weight in self.sparsifier.weights.items():
            if weight.grad is None:
                raise ValueError(f"BiDST needs the dense gradient of {name!r}; call it after backward")
            h = mask_hypergradient(self.theta(name), self.sparsifier.masks[name], weight.grad, self.gamma)
            self.scores[name].sub_(h, alpha=self.score_lr)
        if step == 0 or step % self.interval:
            return False
        changed = 0
        for name, weight in self.sparsifier.weights.items():
            old = self.sparsifier.masks[name]
            # where, not a product: an infinite margin times an inactive 0 would be NaN
            biased = torch.where(old, self.scores[name] + self.hysteresis, self.scores[name])
            new = top_k_mask(biased, self.sparsifier.budgets[name])
            dropped, grown = old & ~new, new & ~old
            self.latent[name][dropped] = weight.detach()[dropped]
            if self.reactivate == "latent":
                weight[grown] = self.latent[name][grown]
            self.sparsifier.set_mask(name, new)
            changed += int(grown.sum())
        self.turnover.append(changed)
        self.sparsifier.apply(optimizer)
        return changed > 0
