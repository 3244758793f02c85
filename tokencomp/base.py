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
    importance [N]     a precomputed importance; overrides cls_attn / text for methods that rank tokens
    grid       (h, w)  patch grid of the N tokens in row-major order; square grids are inferred
    seed       int     for stochastic methods
    """

    cls_attn: torch.Tensor | None = None
    text: torch.Tensor | None = None
    keys: torch.Tensor | None = None
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
    """A pure selection of `tokens` [N, D] at `index` (any order; duplicates are a bug)."""
    index = torch.sort(index.to(torch.long)).values
    return Compressed(tokens=tokens[index], index=index)


def cosine_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [N, M] between rows of x [N, D] and y [M, D] (y = x when omitted), in float64.

    Near-duplicate patches (backgrounds) have cosines within float32 rounding of 1, so in float32 the rounding
    error, which differs between engines (vLLM's and transformers' CLIP agree to ~1e-7), would decide which of
    them greedy selections pick. In float64 such noise moves no pick (tests/test_ties.py)."""
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    yn = xn if y is None else torch.nn.functional.normalize(y.double(), dim=-1)
    return xn @ yn.T


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Rescale [N] to [0, 1]; a constant vector becomes all ones (every token equally important)."""
    x = x.float()
    span = x.max() - x.min()
    if span <= 0:
        return torch.ones_like(x)
    return (x - x.min()) / span


def first_max(scores: torch.Tensor, tol: float) -> int:
    """Index of the maximum of scores [N], every value within `tol` of it counting as equal and the lowest index
    winning. Identical patches (flat backgrounds) differ between engines only in their last bits, so a plain
    argmax would let float noise pick among them; rounding instead would flip whenever a value sits on a
    rounding boundary. Here a pick can only change if some value lies within noise of max - tol."""
    top = scores.max()
    return int(torch.nonzero(scores >= top - tol)[0])


def tolerant_order(scores: torch.Tensor, tol: float) -> torch.Tensor:
    """Indices ordering scores [N] from high to low, where each run of values within `tol` of the run's highest
    keeps index order (the sorting counterpart of `first_max`)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    values = scores[order].tolist()
    runs, start = torch.empty(len(values), dtype=torch.long), 0
    for i, v in enumerate(values):
        if v < values[start] - tol:
            start = i
        runs[i] = start
    # within a run: by index; runs stay in descending order
    key = runs * len(values) + order
    return order[torch.argsort(key)]
