"""Flatness measures of a trained model at its weights: random-perturbation sharpness and the top Hessian
eigenvalue. Both take `loss_fn()` (a full forward on a fixed evaluation set, returning the scalar loss) and the
parameters to perturb; an optional `masks` (param -> bool tensor) restricts directions to active weights, so a
sparse model is measured inside its own subspace."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _masked(tensors: list[torch.Tensor], params: list[torch.nn.Parameter],
            masks: dict[torch.nn.Parameter, torch.Tensor] | None) -> list[torch.Tensor]:
    if not masks:
        return tensors
    by_id = {id(p): m for p, m in masks.items()}
    return [t * by_id[id(p)] if id(p) in by_id else t for p, t in zip(params, tensors, strict=True)]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t[None]


@torch.no_grad()
def perturbation_sharpness(loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter], radius: float,
                           directions: int = 10, generator: torch.Generator | None = None,
                           masks: dict[torch.nn.Parameter, torch.Tensor] | None = None) -> float:
    """E_d[L(w + r d)] − L(w) over Gaussian d, each row of d scaled to the norm of the weight's row (filter
    normalisation, Li et al. 2018; a 1-D tensor is one row). Weights are restored bitwise afterwards."""
    saved = [p.detach().clone() for p in params]
    base = float(loss_fn())
    total = 0.0
    for _ in range(directions):
        raw = _masked([torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params], params, masks)
        for p, s, d in zip(params, saved, raw, strict=True):
            rows_d, rows_w = _rows(d), _rows(s)
            scale = rows_w.norm(dim=1, keepdim=True) / rows_d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            p.copy_(s + radius * (rows_d * scale).reshape(p.shape))
        total += float(loss_fn())
    for p, s in zip(params, saved, strict=True):
        p.copy_(s)
    return total / directions - base


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter],
                           iterations: int = 30, generator: torch.Generator | None = None,
                           masks: dict[torch.nn.Parameter, torch.Tensor] | None = None) -> float:
    """Largest-magnitude Hessian eigenvalue by power iteration on Hessian-vector products (double backprop)."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = _masked([torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params], params, masks)
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        hv = _masked([h.detach() for h in hv], params, masks)
        eigenvalue = float(sum((a * b).sum() for a, b in zip(v, hv, strict=True)))
        v = hv
    return eigenvalue
