"""Spatial pooling: average-pool the patch grid to the smallest near-square grid with >= K cells, then keep K
cells at a uniform stride (exactly an 8x8 average pool for 64 of 24x24). A strong baseline in pruning studies."""

from __future__ import annotations

import math

import torch

from tokencomp.base import Compressed, Signals, group_sum
from tokencomp.methods import register


def infer_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        return grid
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"method 'pool' needs grid=(h, w): N = {n} tokens is not a square grid")
    return side, side


def pooled_grid(k: int, h: int, w: int) -> tuple[int, int]:
    """(gh, gw) with gh <= h, gw <= w, gh * gw >= k, close to the input's aspect ratio."""
    gh = min(h, max(1, round(math.sqrt(k * h / w))))
    gw = min(w, math.ceil(k / gh))
    if gh * gw < k:
        gh = min(h, math.ceil(k / gw))
    return gh, gw


def _cell_edges(size: int, cells: int, device: torch.device) -> torch.Tensor:
    """Bin of each of `size` positions when split into `cells` near-equal runs (adaptive pooling's bins)."""
    return torch.arange(size, device=device) * cells // size


@register("pool", uses=("grid",), generates=True)
def pool(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    n = tokens.shape[0]
    h, w = infer_grid(n, signals.grid)
    gh, gw = pooled_grid(k, h, w)
    dev = tokens.device
    cell = (_cell_edges(h, gh, dev)[:, None] * gw + _cell_edges(w, gw, dev)[None, :]).reshape(-1)  # [N] per patch
    cells = gh * gw
    kept_cells = (torch.linspace(0, cells - 1, k, device=dev).round().long() if cells > k
                  else torch.arange(cells, device=dev))
    slot_of_cell = torch.full((cells,), -1, dtype=torch.long, device=dev)
    slot_of_cell[kept_cells] = torch.arange(k, device=dev)
    slot = slot_of_cell[cell]
    x = tokens.float()
    counts = torch.bincount(cell, minlength=cells).float()
    means = group_sum(x, cell, cells) / counts[:, None]
    # each output stands at the first patch (row-major) of its cell, so positions stay increasing
    first = torch.full((cells,), n, dtype=torch.long, device=dev).scatter_reduce(
        0, cell, torch.arange(n, device=dev), "amin")
    return Compressed(tokens=means[kept_cells], index=first[kept_cells], assignment=slot)
