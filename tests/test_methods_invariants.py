"""Invariants every registered method must keep (README: The API in five lines), checked over all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tokencomp
from tests.helpers import make_signals

METHODS = [m for m in tokencomp.methods.available() if m != "none"]
N, D = 64, 16  # an 8x8 grid
# every method runs on the tokens' device; CUDA is exercised wherever it exists (CPU-only CI runs "cpu")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _on(device: str, tokens: torch.Tensor, sig: dict) -> tuple[torch.Tensor, dict]:
    return tokens.to(device), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sig.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 7, 16, 63])
def test_exact_count_unique_sorted_indices(method, k, device):
    tokens, sig = _on(device, *make_signals(N, D))
    out = tokencomp.compress(tokens, k, method, **sig)
    assert out.tokens.device == tokens.device and out.index.device == tokens.device
    assert out.tokens.shape == (k, D)
    assert out.index.shape == (k,) and out.index.dtype == torch.long
    assert torch.all(out.index[1:] > out.index[:-1]), "indices must be unique and in original order"
    assert 0 <= int(out.index.min()) and int(out.index.max()) < N
    spec = tokencomp.methods.get(method)
    if spec.generates:
        a = out.assignment
        assert a.shape == (N,) and int(a.min()) >= -1 and int(a.max()) < k
        assert set(a[a >= 0].tolist()) == set(range(k)), "every output row is fed by some input token"
        assert torch.equal(a[out.index].cpu(), torch.arange(k)), "each output's anchor feeds it"
    else:
        assert out.assignment is None
        assert torch.equal(out.tokens, tokens[out.index]), "selection returns the input rows"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", tokencomp.methods.available())
@pytest.mark.parametrize("k", [N, N + 1, 10_000])
def test_budget_at_least_n_is_identity(method, k, device):
    tokens, sig = _on(device, *make_signals(N, D))
    out = tokencomp.compress(tokens, k, method, **sig)
    assert torch.equal(out.tokens, tokens) and torch.equal(out.index.cpu(), torch.arange(N))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method, device):
    tokens, sig = _on(device, *make_signals(N, D))
    a = tokencomp.compress(tokens, 12, method, **sig)
    b = tokencomp.compress(tokens.clone(), 12, method, **sig)
    assert torch.equal(a.index, b.index) and torch.equal(a.tokens, b.tokens)


def test_random_seed_changes_and_fixes_the_draw():
    tokens, _ = make_signals(N, D)
    a = tokencomp.compress(tokens, 12, "random", seed=1).index
    assert torch.equal(a, tokencomp.compress(tokens, 12, "random", seed=1).index)
    assert not torch.equal(a, tokencomp.compress(tokens, 12, "random", seed=2).index)


@pytest.mark.parametrize("method", tokencomp.methods.available())
def test_batched_equals_per_item(method):
    items = [make_signals(N, D, seed=s) for s in range(3)]
    tokens = torch.stack([t for t, _ in items])
    sig = {key: torch.stack([s[key] for _, s in items]) for key in items[0][1]}
    out = tokencomp.compress(tokens, 10, method, **sig)
    for b, (t, s) in enumerate(items):
        one = tokencomp.compress(t, 10, method, **s)
        assert torch.equal(out.index[b], one.index)
        assert torch.allclose(out.tokens[b], one.tokens)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_input(method, device):
    tokens, sig = _on(device, *make_signals(N, D))
    out = tokencomp.compress(tokens.bfloat16(), 16, method, **sig)
    assert out.tokens.dtype == torch.bfloat16 and out.tokens.shape == (16, D)
    assert torch.all(out.index[1:] > out.index[:-1])
    ref = tokencomp.compress(tokens.bfloat16().float(), 16, method, **sig)
    assert torch.equal(out.index, ref.index), "bf16 input is computed on like its float32 upcast"


# `none` with budget None is its normal call (the unmodified model), so that one pair is not an error.
BAD_BUDGETS = [0, -3, 64.0, 2.5, None, True, "64"]


@pytest.mark.parametrize(
    "method, budget",
    [(m, b) for m in tokencomp.methods.available() for b in BAD_BUDGETS if not (m == "none" and b is None)],
)
def test_bad_budget_names_the_value(method, budget):
    tokens, sig = make_signals(N, D)
    with pytest.raises(ValueError, match="budget must be a positive integer, got " + repr(budget).replace(".", r"\.")):
        tokencomp.compress(tokens, budget, method, **sig)


def test_numpy_integer_budget_is_accepted():
    tokens, sig = make_signals(N, D)
    assert tokencomp.compress(tokens, np.int64(8), "id_pruner", **sig).tokens.shape == (8, D)


@pytest.mark.parametrize(
    "method, missing",
    [("id_pruner", "cls_attn"), ("itg", "cls_attn"), ("mmr", "cls_attn"), ("visionzip", "cls_attn"),
     ("vispruner", "cls_attn"), ("cdpruner", "text"), ("visionzip", "keys")],
)
def test_missing_signal_is_named(method, missing):
    tokens, sig = make_signals(N, D)
    given = {k: v for k, v in sig.items() if k == "cls_attn" and missing != "cls_attn"}
    with pytest.raises(ValueError, match=missing):
        tokencomp.compress(tokens, 8, method, **given)


def test_pool_needs_grid_for_non_square_n():
    tokens, _ = make_signals(N, D)
    with pytest.raises(ValueError, match="grid"):
        tokencomp.compress(tokens[:60], 8, "pool")
    assert tokencomp.compress(tokens[:60], 8, "pool", grid=(6, 10)).tokens.shape == (8, D)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: tokencomp.compress(t, 8, "nope"), "unknown method 'nope'; available: cdpruner"),
        (lambda t: tokencomp.compress(t, 8, "itg", cls_attn=torch.rand(N), tua=1.0), r"unknown option\(s\) \['tua'\]"),
        (lambda t: tokencomp.compress(t, 8, "itg", cls_attn=torch.rand(N + 1)), r"cls_attn must have shape \[64\]"),
        (lambda t: tokencomp.compress(t[None, None], 8, "random"), "tokens must be a floating tensor"),
        (lambda t: tokencomp.compress(t.long(), 8, "random"), "tokens must be a floating tensor"),
        (lambda t: tokencomp.compress(t, 8, "pool", grid=(7, 7)), "does not hold N = 64"),
        (lambda t: tokencomp.compress(t, 8, "itg", cls_attn=torch.rand(N), tau=0.0), "tau must be > 0"),
        (lambda t: tokencomp.compress(t, 8, "cdpruner", text=torch.randn(3, D + 1)), r"text must be \[T, 16\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    tokens, _ = make_signals(N, D)
    with pytest.raises(ValueError, match=message):
        call(tokens)


class _Dtypes(TorchDispatchMode):
    """Records the dtype of every tensor each aten op returns."""

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen.add(t.dtype)
        return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_float64_anywhere_in_a_method(method, dtype):
    # float64 is slow or absent on accelerators: every op of every method stays in float32 / the input's dtype
    tokens, sig = make_signals(N, D)
    sig = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sig.items()}
    with _Dtypes() as mode:
        tokencomp.compress(tokens.to(dtype), 12, method, **sig)
    assert torch.float64 not in mode.seen, sorted(map(str, mode.seen))
