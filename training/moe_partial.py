"""Partial expert updates for a new task: measure how much routing mass each expert receives on the task's data,
then train only the top-u experts of every layer and the routers, leaving the other experts bit-identical.

The thesis chapter this follows (Zheng, 2025) states only that per task "a subset of experts is updated"; the
choice by routing mass on the task's own data and the per-layer top-u are ours. Mass is the sum, over the tokens
counted, of the (renormalised top-k) weight the router gives each expert: how much of the layer's output that
expert makes on this task.
"""

from __future__ import annotations

from typing import Self

import torch
from torch.profiler import ProfilerActivity, profile

from tokencomp.training.moe import experts_of


class RouterRecorder:
    """While active (a context manager), records each layer's router output on every forward:
    `outputs[i]` = (logits [T, E], weights [T, k], experts [T, k]) of the i-th router call, layers in order
    (T: batch x sequence tokens, flattened)."""

    def __init__(self, model) -> None:
        self.gates = [layer.mlp.gate for layer in model.model.language_model.layers]
        self.outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._handles: list = []

    def __enter__(self) -> Self:
        self._handles = [g.register_forward_hook(lambda _m, _i, out: self.outputs.append(out)) for g in self.gates]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The outputs recorded since the last take, then forgotten."""
        out, self.outputs = self.outputs, []
        return out


def routing_mass(outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], groups: torch.Tensor,
                 num_groups: int, num_experts: int) -> torch.Tensor:
    """[layers, num_groups, E]: per layer, the summed routing weight each expert got from the tokens of each group.
    outputs: one forward's `RouterRecorder` outputs (one per layer); groups [T]: each token's group (e.g. 0 image,
    1 question and answer), -1 for tokens not counted (padding)."""
    mass = torch.zeros(len(outputs), num_groups, num_experts, dtype=torch.float64)
    keep = groups >= 0
    for layer, (_, weights, experts) in enumerate(outputs):
        slot = (groups[keep, None] * num_experts + experts[keep]).flatten()
        mass[layer].view(-1).index_add_(0, slot, weights[keep].detach().flatten().double())
    return mass


def top_experts(mass: torch.Tensor, u: int) -> torch.Tensor:
    """[layers, u] the u experts with the most mass in each layer (ties to the lower index), from mass
    [layers, E]."""
    if not 1 <= u <= mass.shape[-1]:
        raise ValueError(f"u must be in [1, E={mass.shape[-1]}], got {u}")
    return torch.sort(torch.argsort(-mass, dim=-1, stable=True)[:, :u], dim=-1).values


def random_experts(layers: int, num_experts: int, u: int, seed: int) -> torch.Tensor:
    """[layers, u] u distinct experts per layer drawn uniformly at random with `seed` (sorted per row): the
    control for `top_experts`, training as many experts chosen without looking at the routing."""
    if not 1 <= u <= num_experts:
        raise ValueError(f"u must be in [1, E={num_experts}], got {u}")
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(num_experts, generator=generator)[:u] for _ in range(layers)]
    return torch.sort(torch.stack(rows), dim=-1).values


def train_only_experts(model, chosen: torch.Tensor) -> list[torch.nn.Parameter]:
    """Freeze everything but the routers and, per layer i, the experts chosen[i] (call `split_experts` first);
    return the parameters left trainable."""
    model.requires_grad_(False)
    experts = experts_of(model)
    if len(chosen) != len(experts):
        raise ValueError(f"chosen has {len(chosen)} rows, expected one per layer ({len(experts)})")
    for layer, picks in zip(model.model.language_model.layers, chosen.tolist()):
        layer.mlp.gate.requires_grad_(True)
        for e in picks:
            layer.mlp.experts.experts[e].requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def peak_step_bytes(step) -> int:
    """Peak bytes the CPU allocator held above its level at the start of `step()`, from torch.profiler's memory
    events (profile_memory=True): for a first training step, activations + gradients + optimizer state."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak
