"""Step strategies: one optimisation step from a closure, with pass counters.

Every strategy is called as `strategy.step(loss_fn)`, where `loss_fn()` runs one forward pass on the current batch
and returns the scalar loss; the strategy owns zero_grad, backward, the weight perturbation and the base optimizer
step. `forwards` and `backwards` count the passes the method spends (tested: SAM 2 + 2, S2-SAM 1 + 1, ZO-SAM
2q + 1 forwards and 1 backward). With a `Sparsifier`, gradients are masked before the base step and masks are
re-applied (weights and optimizer state) after it.

- `BaseStep`: plain backward + optimizer step.
- `SAMStep` (Foret et al., ICLR 2021): ε = ρ g/‖g‖ from the batch's gradient at w, gradient again at w + ε, base
  step at w with that gradient.
- `S2SAMStep` (Ji et al., NeurIPS 2024): one pass a step; ε = ρ g_prev/‖g_prev‖ from the previous step's gradient
  (no perturbation at the first step). As the authors' released loop does, ε covers every entry, pruned ones
  included; `mask_perturbation=True` restricts it to the active weights instead.
- `ZOSAMStep` (Ji et al., arXiv 2603.13115, 2026): ε = ρ ĝ/‖ĝ‖ with ĝ the randomised central-difference estimate
  (1/q) Σ_i [L(w + μ u_i) − L(w − μ u_i)] / (2μ) u_i over q Gaussian directions, regenerated from a seed instead of
  stored; then one ordinary backward at w + ε. The paper leaves the direction law and whether u covers pruned
  weights open: we draw standard Gaussians and `active_only` (default True) restricts them to active weights.
  `direction="random"` (same ρ, a random Gaussian direction, no extra forwards) and `direction="exact"` (same ρ,
  the exact gradient: SAM) are the ablations. `measure_cosine=True` also computes the exact gradient at w (one
  diagnostic forward + backward, counted in `diagnostic_passes`, not in the method's counters) and records
  cos(ĝ, g) in `cosines`.

Weights are restored from a saved copy after each perturbation (not by subtracting ε), so ρ = 0 reproduces the
base optimizer bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tokencomp.training.sparsifier import Sparsifier

LossFn = Callable[[], torch.Tensor]


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class BaseStep:
    """Backward + base optimizer step; subclasses add the perturbation. `params`: the trained parameters."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 sparsifier: Sparsifier | None = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.sparsifier = sparsifier
        self.forwards = 0
        self.backwards = 0

    def _forward_backward(self, loss_fn: LossFn) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        loss = loss_fn()
        self.forwards += 1
        loss.backward()
        self.backwards += 1
        return loss.detach()

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def _perturb(self, direction: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
        """Add ρ d/‖d‖ to the weights; returns the saved weights to restore. A zero direction perturbs nothing."""
        saved = [p.detach().clone() for p in self.params]
        norm = _global_norm(direction)
        if norm > 0:
            for p, d in zip(self.params, direction, strict=True):
                p.add_(d, alpha=rho / float(norm))
        return saved

    @torch.no_grad()
    def _restore(self, saved: list[torch.Tensor]) -> None:
        for p, s in zip(self.params, saved, strict=True):
            p.copy_(s)

    def _base_step(self) -> None:
        if self.sparsifier is not None:
            self.sparsifier.mask_grads()
        self.optimizer.step()
        if self.sparsifier is not None:
            self.sparsifier.apply(self.optimizer)

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        """One step; returns the loss of the forward pass whose gradient drives the base step."""
        loss = self._forward_backward(loss_fn)
        self._base_step()
        return loss


class SAMStep(BaseStep):
    """SAM: 2 forwards + 2 backwards a step."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 sparsifier: Sparsifier | None = None) -> None:
        super().__init__(params, optimizer, sparsifier)
        self.rho = rho

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        loss = self._forward_backward(loss_fn)
        saved = self._perturb([g.clone() for g in self._grads()], self.rho)
        self._forward_backward(loss_fn)
        self._restore(saved)
        self._base_step()
        return loss


class S2SAMStep(BaseStep):
    """S2-SAM: 1 forward + 1 backward a step, ascent along the previous step's gradient. `last_epsilon` holds the
    perturbation applied at the latest step (None at the first)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, rho: float = 0.5,
                 sparsifier: Sparsifier | None = None, mask_perturbation: bool = False) -> None:
        super().__init__(params, optimizer, sparsifier)
        self.rho = rho
        self.mask_perturbation = mask_perturbation
        self.previous_grads: list[torch.Tensor] | None = None
        self.last_epsilon: list[torch.Tensor] | None = None

    def _direction(self) -> list[torch.Tensor]:
        direction = [g.clone() for g in self.previous_grads]
        if self.mask_perturbation and self.sparsifier is not None:
            masks = {id(w): self.sparsifier.masks[n] for n, w in self.sparsifier.weights.items()}
            direction = [d * masks[id(p)] if id(p) in masks else d for p, d in zip(self.params, direction,
                                                                                    strict=True)]
        return direction

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        saved = None
        self.last_epsilon = None
        if self.previous_grads is not None:
            saved = self._perturb(self._direction(), self.rho)
            self.last_epsilon = [p.detach() - s for p, s in zip(self.params, saved, strict=True)]
        loss = self._forward_backward(loss_fn)
        # the unmasked gradient, as in the released code: it steers the next step's ascent
        self.previous_grads = [g.detach().clone() for g in self._grads()]
        if saved is not None:
            self._restore(saved)
        self._base_step()
        return loss


class ZOSAMStep(BaseStep):
    """ZO-SAM and its two ablations; see the module docstring. `seed` fixes the direction stream."""

    DIRECTIONS = ("zo", "random", "exact")

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 q: int = 1, mu: float = 1e-3, seed: int = 0, direction: str = "zo",
                 sparsifier: Sparsifier | None = None, active_only: bool = True,
                 measure_cosine: bool = False) -> None:
        super().__init__(params, optimizer, sparsifier)
        if direction not in self.DIRECTIONS:
            raise ValueError(f"direction must be one of {self.DIRECTIONS}, got {direction!r}")
        if q < 1 or mu <= 0:
            raise ValueError(f"need q >= 1 and mu > 0, got q={q}, mu={mu}")
        self.rho, self.q, self.mu, self.seed = rho, q, mu, seed
        self.direction, self.active_only, self.measure_cosine = direction, active_only, measure_cosine
        self.steps = 0
        self.diagnostic_passes = 0
        self.cosines: list[float] = []

    def _directions_mask(self) -> dict[int, torch.Tensor]:
        if not self.active_only or self.sparsifier is None:
            return {}
        return {id(w): self.sparsifier.masks[n] for n, w in self.sparsifier.weights.items()}

    def _direction_u(self, index: int) -> list[torch.Tensor]:
        """Direction u_index of this step, regenerated from (seed, step, index) rather than stored."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps * 1_009 + index)
        masks = self._directions_mask()
        out = []
        for p in self.params:
            u = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            out.append(u * masks[id(p)] if id(p) in masks else u)
        return out

    @torch.no_grad()
    def zo_estimate(self, loss_fn: LossFn) -> list[torch.Tensor]:
        """ĝ from 2q forward passes (counted); the weights are restored bitwise after each pair."""
        saved = [p.detach().clone() for p in self.params]
        coefficients = []
        for i in range(self.q):
            u = self._direction_u(i)
            for p, d in zip(self.params, u, strict=True):
                p.add_(d, alpha=self.mu)
            plus = float(loss_fn())
            for p, s, d in zip(self.params, saved, u, strict=True):
                p.copy_(s).add_(d, alpha=-self.mu)
            minus = float(loss_fn())
            self.forwards += 2
            self._restore(saved)
            coefficients.append((plus - minus) / (2 * self.mu * self.q))
        estimate = [torch.zeros_like(p) for p in self.params]
        for i, c in enumerate(coefficients):
            for e, d in zip(estimate, self._direction_u(i), strict=True):
                e.add_(d, alpha=c)
        return estimate

    def _exact_gradient(self, loss_fn: LossFn, count: bool) -> list[torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=False)
        loss_fn().backward()
        if count:
            self.forwards += 1
            self.backwards += 1
        else:
            self.diagnostic_passes += 1
        return [g.clone() for g in self._grads()]

    def step(self, loss_fn: LossFn) -> torch.Tensor:
        if self.direction == "zo":
            direction = self.zo_estimate(loss_fn)
        elif self.direction == "random":
            direction = self._direction_u(0)
        else:
            direction = self._exact_gradient(loss_fn, count=True)
        if self.measure_cosine and self.direction == "zo":
            exact = self._exact_gradient(loss_fn, count=False)
            flat_est = torch.cat([d.flatten() for d in direction])
            flat_exact = torch.cat([g.flatten() for g in exact])
            self.cosines.append(float(torch.nn.functional.cosine_similarity(flat_est, flat_exact, dim=0)))
        saved = self._perturb(direction, self.rho)
        loss = self._forward_backward(loss_fn)
        self._restore(saved)
        self._base_step()
        self.steps += 1
        return loss
