"""`compress`: validate inputs once, dispatch to a registered method, handle batching and the trivial budgets."""

from __future__ import annotations

import dataclasses
import numbers

import torch

from tokencomp import methods
from tokencomp.base import Compressed, Signals

_PER_ITEM_SIGNALS = ("cls_attn", "text", "keys", "features", "importance")


def check_budget(budget: object) -> int:
    """A budget is a positive int (numpy ints too); floats, bools and None are rejected, naming the value."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget <= 0:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    return int(budget)


def compress(tokens: torch.Tensor, budget: int | None, method: str = "id_pruner", **kwargs) -> Compressed:
    """Compress the visual tokens of one image [N, D] (or a batch [B, N, D]) to min(budget, N) tokens.

    kwargs are signals (see `Signals`: cls_attn, text, keys, importance, grid, seed; batched inputs take a
    leading B dimension on the per-item ones) and the method's own options (e.g. `tau` for itg).
    Returns `Compressed`; for a batch its fields carry a leading B dimension.
    """
    spec = methods.get(method)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim not in (2, 3) or not tokens.is_floating_point():
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a floating tensor [N, D] or [B, N, D], got {shape}")
    if tokens.shape[-2] == 0:
        raise ValueError("tokens must hold at least one token, got N = 0")
    k = None if method == "none" and budget is None else check_budget(budget)
    signal_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in Signals.names()}
    allowed = spec.options()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; signals: {', '.join(Signals.names())}; "
            f"options: {', '.join(allowed) or 'none'}"
        )
    if spec.batched and k is not None and k < tokens.shape[-2]:
        return _compress_batched(spec, tokens, k, signal_kwargs, kwargs)
    if tokens.ndim == 2:
        return _compress_one(spec, tokens, k, Signals(**signal_kwargs), kwargs)
    outs = [
        _compress_one(spec, tokens[b], k, Signals(**_item(signal_kwargs, b, tokens.shape[0])), kwargs)
        for b in range(tokens.shape[0])
    ]
    assignment = None if outs[0].assignment is None else torch.stack([o.assignment for o in outs])
    return Compressed(
        tokens=torch.stack([o.tokens for o in outs]),
        index=torch.stack([o.index for o in outs]),
        assignment=assignment,
    )


def _compress_batched(spec: methods.Method, tokens: torch.Tensor, k: int, signal_kwargs: dict, options: dict
                      ) -> Compressed:
    """One call of a batched method on [B, N, D] (a single image [N, D] is a batch of one): each greedy step
    serves every image at once."""
    single = tokens.ndim == 2
    batch = tokens[None] if single else tokens
    if single:
        signal_kwargs = {key: value[None] if key in _PER_ITEM_SIGNALS and value is not None else value
                         for key, value in signal_kwargs.items()}
    for b in range(batch.shape[0]):
        _check_signal_shapes(Signals(**_item(signal_kwargs, b, batch.shape[0])), batch.shape[1])
    # signals join the tokens' device (a no-op when they are already there), so methods never mix devices
    moved = {key: value.to(batch.device) if key in _PER_ITEM_SIGNALS and value is not None else value
             for key, value in signal_kwargs.items()}
    out = spec.fn(batch, k, Signals(**moved), **options)
    if out.tokens.shape != (batch.shape[0], k, batch.shape[2]) or out.index.shape != (batch.shape[0], k):
        raise RuntimeError(f"method {spec.name!r} returned {tuple(out.tokens.shape)} tokens for budget {k}")
    out = Compressed(tokens=out.tokens.to(tokens.dtype), index=out.index, assignment=out.assignment)
    if single:
        return Compressed(tokens=out.tokens[0], index=out.index[0],
                          assignment=None if out.assignment is None else out.assignment[0])
    return out


def _item(signal_kwargs: dict, b: int, batch: int) -> dict:
    out = dict(signal_kwargs)
    for key in _PER_ITEM_SIGNALS:
        value = out.get(key)
        if value is not None:
            if len(value) != batch:
                raise ValueError(f"{key} must have a leading batch dimension of {batch}, got {len(value)}")
            out[key] = value[b]
    return out


def _compress_one(spec: methods.Method, tokens: torch.Tensor, k: int | None, signals: Signals, options: dict):
    n = tokens.shape[0]
    _check_signal_shapes(signals, n)
    if k is None or k >= n or spec.name == "none":
        # Nothing to drop: the input itself, whatever signals were (not) given.
        return Compressed(tokens=tokens, index=torch.arange(n, device=tokens.device), assignment=None)
    # signals join the tokens' device (a no-op when they are already there), so methods never mix devices
    present = {key: getattr(signals, key) for key in _PER_ITEM_SIGNALS if getattr(signals, key) is not None}
    moved = {key: value.to(tokens.device) for key, value in present.items()}
    out = spec.fn(tokens, k, dataclasses.replace(signals, **moved), **options)
    if out.tokens.shape != (k, tokens.shape[1]) or out.index.shape != (k,):
        raise RuntimeError(f"method {spec.name!r} returned {tuple(out.tokens.shape)} tokens for budget {k}")
    return Compressed(tokens=out.tokens.to(tokens.dtype), index=out.index, assignment=out.assignment)


def _check_signal_shapes(signals: Signals, n: int) -> None:
    for key in ("cls_attn", "importance"):
        value = getattr(signals, key)
        if value is not None and tuple(value.shape) != (n,):
            raise ValueError(f"{key} must have shape [{n}] (one value per token), got {tuple(value.shape)}")
    for key, width in (("keys", "Dk"), ("features", "Dv")):
        value = getattr(signals, key)
        if value is not None and (value.ndim != 2 or value.shape[0] != n):
            raise ValueError(f"{key} must have shape [{n}, {width}], got {tuple(value.shape)}")
    if signals.grid is not None:
        h, w = signals.grid
        if h * w != n:
            raise ValueError(f"grid {signals.grid} does not hold N = {n} tokens")
