"""Tie handling: values equal up to float noise rank by index, and noise of the size engines differ by (1e-7)
never changes a pick, whereas a rounding grid would flip picks whose values straddle a boundary."""

from __future__ import annotations

import pytest
import torch

import tokencomp
from tokencomp.base import first_max, tolerant_order


def _naive_first_max(values: list[float], tol: float) -> int:
    top = max(values)
    return min(i for i, v in enumerate(values) if v >= top - tol)


def _naive_order(values: list[float], tol: float) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    runs, start = [], 0
    for pos, i in enumerate(order):
        if values[i] < values[order[start]] - tol:
            start = pos
        runs.append(start)
    return [i for _, i in sorted(zip(runs, order))]


@pytest.mark.parametrize("seed", range(20))
def test_first_max_and_tolerant_order_match_naive_loops(seed):
    g = torch.Generator().manual_seed(seed)
    values = (torch.randint(0, 6, (15,), generator=g) / 5 + torch.rand(15, generator=g) * 1e-3).tolist()
    scores = torch.tensor(values, dtype=torch.float64)
    for tol in (0.0, 1e-3, 0.3):
        assert first_max(scores, tol) == _naive_first_max(values, tol)
        assert tolerant_order(scores, tol).tolist() == _naive_order(values, tol)


def test_first_max_ignores_noise_across_a_rounding_boundary():
    # 0.123455 rounds up at 5 decimals, 0.1234549 down: rounding would flip the pick, the tolerance does not
    assert first_max(torch.tensor([0.1234549, 0.123455], dtype=torch.float64), 1e-5) == 0
    assert first_max(torch.tensor([0.123455, 0.1234549], dtype=torch.float64), 1e-5) == 0


@pytest.mark.parametrize("method", tokencomp.methods.available())
def test_flat_background_picks_do_not_depend_on_last_bit_noise(method):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 16, generator=g).repeat_interleave(16, dim=0)  # 64 tokens: 4 groups of identical patches
    base += torch.randn(64, 16, generator=g) * 0.05 * (torch.arange(64) % 16 == 0)[:, None]  # one distinct per group
    signals = {"cls_attn": torch.softmax(base.sum(1), 0), "text": torch.randn(3, 16, generator=g), "grid": (8, 8)}
    clean = tokencomp.compress(base, 12, method, **signals).index
    for s in range(5):
        g = torch.Generator().manual_seed(100 + s)
        noisy = signals | {"cls_attn": signals["cls_attn"] * (1 + torch.randn(64, generator=g) * 1e-7)}
        noise = torch.randn(base.shape, generator=g) * 1e-7
        assert torch.equal(tokencomp.compress(base + noise, 12, method, **noisy).index, clean), s


@pytest.mark.parametrize("method", tokencomp.methods.available())
def test_near_duplicate_picks_do_not_depend_on_last_bit_noise(method):
    # real backgrounds: patches that differ by a little (1 - cos ~ 1e-6), where float32 cosines are mostly
    # rounding error; selections must follow the real differences, not the engine's rounding
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 64, generator=g).repeat_interleave(96, dim=0) * 3  # 576 tokens, 6 regions
    base += torch.randn(base.shape, generator=g) * 3e-3
    signals = {"cls_attn": torch.softmax(base[:, 0], 0), "text": torch.randn(3, 64, generator=g), "grid": (24, 24)}
    clean = tokencomp.compress(base, 64, method, **signals)
    for s in range(3):
        g = torch.Generator().manual_seed(200 + s)
        noisy = base * (1 + torch.randn(base.shape, generator=g) * 1e-7)
        out = tokencomp.compress(noisy, 64, method, **signals)
        assert torch.equal(out.index, clean.index), s
        if clean.assignment is not None:
            assert torch.equal(out.assignment, clean.assignment), s
