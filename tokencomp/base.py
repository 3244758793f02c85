"""Types shared by every compression method: the signals a method may read and the result it returns."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Signals:
    """Per-image side information, all optional; a method that needs a missing one raises ValueError.

    cls_attn   [N]     CLS->patch attention of the feature layer (question-agnostic importance)
    text       [T, D]  the instruction's token embeddings, same space as the visual tokens (question-aware)
    keys       [N, Dk] the feature layer's key vectors (VisionZip merges by key similarity)
    features   [N, Dv] the vision tower's patch features before the projector (VisPruner de-duplicates on them,
                       as its released code does; Dv is often narrower than the tokens' D)
    importance [N]     a precomputed importance; overrides cls_attn / text for methods that rank tokens
    grid       (h, w)  patch grid of the N tokens in row-major order; square grids are inferred
    seed       int     for stochastic methods
    """

    cls_attn: torch.Tensor | None = None
    text: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    features: torch.Tensor | None = None
    importance: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    seed: int = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Compressed:
    """The K tokens a method emits for one image.

    tokens     [K, D]  in the input's dtype, ordered by `index`
    index      [K]     int64, strictly increasing: the input position each output token stands at (its
                       source token for selection, its anchor for generation); use it for position ids
    assignment [N]     int64 or None: for generating methods, the output row every input token was merged
                       into (-1 if it fed none); None for pure selection (output row k is input index[k])
    """

    tokens: torch.Tensor
    index: torch.Tensor
    assignment: torch.Tensor | None = None


def selected(tokens: torch.Tensor, index: torch.Tensor) -> Compressed:
    """A pure selection of `tokens` [N, D] at `index` [K], or of a batch [B, N, D] at [B, K] (any order;
    duplicates are a bug)."""
    index = torch.sort(index.to(device=tokens.device, dtype=torch.long), dim=-1).values
    if index.ndim == 1:
        return Compressed(tokens=tokens[index], index=index)
    rows = torch.arange(len(index), device=tokens.device)[:, None]
    return Compressed(tokens=tokens[rows, index], index=index)


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [..., N, M] between rows of x [..., N, D] and y [..., M, D] (y = x when omitted), float32
    on x's device: bfloat16 inputs are upcast so that greedy picks do not follow bfloat16 rounding. One matmul;
    the floor every similarity-based method pays (`tokencomp bench select`)."""
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    yn = xn if y is None else torch.nn.functional.normalize(y.float(), dim=-1)
    return xn @ yn.transpose(-1, -2)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Rescale [..., N] to [0, 1] along N in float32; a constant vector becomes all ones (every token equally
    important)."""
    x = x.float()
    low = x.amin(dim=-1, keepdim=True)
    span = x.amax(dim=-1, keepdim=True) - low
    # a branch-free where keeps this free of a device-to-host sync
    return torch.where(span > 0, (x - low) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(x))


def descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices ordering scores [..., N] from high to low along N; equal values keep index order, so the order is
    the same on every run and device."""
    return torch.sort(scores, descending=True, stable=True).indices


def group_sum(x: torch.Tensor, group: torch.Tensor, groups: int, weight: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Per-group weighted sums [G, D] of rows x [N, D] (float32) with group [N] in [0, G) (-1: in no group).

    One [G, N] @ [N, D] matmul on x's device: deterministic (no atomics) and, on CPU, far faster than index_add_
    over wide rows."""
    n = x.shape[0]
    w = torch.ones(n, device=x.device) if weight is None else weight.float()
    member = torch.zeros(groups, n, device=x.device)
    inside = group >= 0
    member[group[inside], torch.arange(n, device=x.device)[inside]] = w[inside]
    return member @ x.float()
