"""Engine noise: two engines' features differ by rounding (vLLM's and transformers' CLIP agree to ~1e-7), and no
method rounds or tie-breaks that away (tie windows overrode real differences). The contract instead: on the same
device the same input keeps the same set, and features perturbed by engine-size noise keep a stated share of it."""

from __future__ import annotations

import pytest
import torch

import tokencomp

METHODS = [m for m in tokencomp.methods.available() if m != "none"]
# Stated tolerance: with relative noise 1e-6 (10x what engines differ by) on 576 tokens of 6 near-flat regions,
# at least 90 % of the 64 kept tokens are kept again (measured: 100 %). The two pure-diversity greedy methods pick
# among near-duplicate patches (1 - cos ~ 1e-4) by differences that rounding can reorder, and a swapped pick
# changes the later ones: for them at least 75 % (measured over 5 draws: 78-97 % DivPrune, 84-92 % CDPruner).
MIN_OVERLAP = {"cdpruner": 0.75, "divprune": 0.75}


def _backgrounds() -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 64, generator=g).repeat_interleave(96, dim=0) * 3  # 576 tokens, 6 regions
    base += torch.randn(base.shape, generator=g) * 3e-2
    signals = {"cls_attn": torch.softmax(base[:, 0], 0), "text": torch.randn(3, 64, generator=g), "grid": (24, 24),
               "keys": base[:, :16].clone(), "features": base[:, ::2].clone()}
    return base, signals


@pytest.mark.parametrize("method", METHODS)
def test_same_input_same_kept_set(method):
    base, signals = _backgrounds()
    first = tokencomp.compress(base, 64, method, **signals)
    again = tokencomp.compress(base.clone(), 64, method, **signals)
    assert torch.equal(first.index, again.index) and torch.equal(first.tokens, again.tokens)


@pytest.mark.parametrize("method", METHODS)
def test_engine_size_noise_keeps_the_stated_overlap(method):
    base, signals = _backgrounds()
    clean = set(tokencomp.compress(base, 64, method, **signals).index.tolist())
    for s in range(3):
        g = torch.Generator().manual_seed(200 + s)
        noisy = base * (1 + torch.randn(base.shape, generator=g) * 1e-6)
        attn = signals["cls_attn"] * (1 + torch.randn(576, generator=g) * 1e-6)
        kept = set(tokencomp.compress(noisy, 64, method, **(signals | {"cls_attn": attn})).index.tolist())
        assert len(kept & clean) / 64 >= MIN_OVERLAP.get(method, 0.9), (s, len(kept & clean))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares CUDA kept sets with the CPU's: needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_keeps_what_the_cpu_keeps_within_the_stated_overlap(method):
    base, signals = _backgrounds()
    on_cpu = set(tokencomp.compress(base, 64, method, **signals).index.tolist())
    moved = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in signals.items()}
    out = tokencomp.compress(base.cuda(), 64, method, **moved)
    assert out.index.is_cuda
    assert len(set(out.index.tolist()) & on_cpu) / 64 >= MIN_OVERLAP.get(method, 0.9)
