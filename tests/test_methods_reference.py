"""Each method against a brute-force or hand-computed reference on small inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tokencomp
from tests.helpers import make_signals
from tokencomp.methods.cdpruner import greedy_map_dpp
from tokencomp.methods.id_pruner import objective, select_by_coverage


def _cos(x: torch.Tensor) -> np.ndarray:
    x = x.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def _minmax(v: np.ndarray) -> np.ndarray:
    return (v - v.min()) / (v.max() - v.min())


# --- CDPruner: incremental-Cholesky greedy MAP == naive log-det greedy ------------------------------------------


def _naive_logdet_greedy(kernel: np.ndarray, k: int) -> list[int]:
    picks: list[int] = []
    for _ in range(k):
        best, best_val = None, -np.inf
        for j in range(len(kernel)):
            if j in picks:
                continue
            s = picks + [j]
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(s, s)])
            val = logdet if sign > 0 else -np.inf
            if val > best_val:
                best, best_val = j, val
        picks.append(best)
    return picks


@pytest.mark.parametrize("seed", range(5))
def test_greedy_dpp_matches_naive_logdet(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(14, 20, generator=g)  # D > N: full-rank kernel
    r = torch.rand(14, generator=g) + 0.1
    kernel = r[:, None] * torch.from_numpy(_cos(x)).float() * r[None, :]
    assert greedy_map_dpp(kernel, 8).tolist() == _naive_logdet_greedy(kernel.double().numpy(), 8)


def test_cdpruner_uses_min_max_text_relevance_kernel():
    tokens, sig = make_signals(16, 24, seed=3)
    text = sig["text"]
    rel = _minmax((_cos(torch.cat([tokens, text]))[:16, 16:]).mean(axis=1))
    kernel = rel[:, None] * _cos(tokens) * rel[None, :]
    expected = sorted(_naive_logdet_greedy(kernel, 6))
    assert tokencomp.compress(tokens, 6, "cdpruner", text=text).index.tolist() == expected


def test_greedy_dpp_fills_by_diagonal_once_rank_is_exhausted():
    x = torch.randn(10, 3)  # rank 3
    kernel = torch.from_numpy(_cos(x)).float()
    picks = greedy_map_dpp(kernel, 6)
    assert len(set(picks.tolist())) == 6


# --- DivPrune: running-min farthest point == naive pairwise loop --------------------------------------------------


def _naive_max_min(x: torch.Tensor, k: int) -> list[int]:
    d = 1 - _cos(x)
    n = len(d)
    nearest = [min(d[i][j] for j in range(n) if j != i) for i in range(n)]
    picks = [int(np.argmax(nearest))]
    while len(picks) < k:
        best, best_val = None, -np.inf
        for i in range(n):
            if i not in picks:
                val = min(d[i][j] for j in picks)
                if val > best_val:
                    best, best_val = i, val
        picks.append(best)
    return picks


@pytest.mark.parametrize("seed", range(5))
def test_divprune_matches_naive_farthest_point(seed):
    tokens, _ = make_signals(36, 8, seed=seed)
    assert tokencomp.compress(tokens, 9, "divprune").index.tolist() == sorted(_naive_max_min(tokens, 9))


# --- MMR ------------------------------------------------------------------------------------------------------------


def _naive_mmr(x: torch.Tensor, r: np.ndarray, k: int, lam: float) -> list[int]:
    s = _cos(x)
    picks = [int(np.argmax(r))]
    while len(picks) < k:
        scores = {i: lam * r[i] - (1 - lam) * max(s[i][j] for j in picks) for i in range(len(r)) if i not in picks}
        picks.append(max(scores, key=lambda i: (scores[i], -i)))
    return picks


@pytest.mark.parametrize("lam", [0.5, 0.2, 0.9])
def test_mmr_matches_naive_loop(lam):
    tokens, sig = make_signals(36, 8, seed=1)
    r = _minmax(sig["cls_attn"].double().numpy())
    out = tokencomp.compress(tokens, 10, "mmr", cls_attn=sig["cls_attn"], lam=lam)
    assert out.index.tolist() == sorted(_naive_mmr(tokens, r, 10, lam))


# --- ID-Pruner: objective, lazy greedy == greedy, (1 - 1/e) bound ---------------------------------------------------


def _problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, sig = make_signals(n, 6, seed=seed)
    return np.clip(_cos(tokens), 0, None).astype(np.float32), _minmax(sig["cls_attn"].numpy())


def _naive_greedy(sim, r, k, alpha) -> list[int]:
    picks: list[int] = []
    for _ in range(k):
        gains = {i: objective(sim, r, picks + [i], k, alpha) for i in range(len(r)) if i not in picks}
        picks.append(max(gains, key=lambda i: (gains[i], -i)))
    return picks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_lazy_greedy_equals_naive_greedy(seed, alpha):
    sim, r = _problem(40, seed)
    assert select_by_coverage(sim, r, 10, alpha) == _naive_greedy(sim, r, 10, alpha)


@pytest.mark.parametrize("seed", range(6))
def test_objective_is_monotone_and_greedy_is_within_1_minus_1_over_e(seed):
    n, k, alpha = 12, 4, 0.5
    sim, r = _problem(n, seed)
    values = {}
    for size in range(k + 1):
        for subset in itertools.combinations(range(n), size):
            values[subset] = objective(sim, r, list(subset), k, alpha)
    for subset, value in values.items():  # monotone: adding any element never lowers F
        for extra in range(n):
            if extra not in subset and len(subset) < k:
                assert values[tuple(sorted(subset + (extra,)))] >= value - 1e-9
    optimum = max(v for s, v in values.items() if len(s) == k)
    greedy = objective(sim, r, select_by_coverage(sim, r, k, alpha), k, alpha)
    assert greedy >= (1 - 1 / math.e) * optimum


def test_id_pruner_spends_rho_k_on_top_importance_then_coverage():
    tokens, sig = make_signals(64, 8, seed=2)
    r = torch.from_numpy(_minmax(sig["cls_attn"].numpy()))
    rho = 0.5
    out = tokencomp.compress(tokens, 16, "id_pruner", cls_attn=sig["cls_attn"], rho=rho)
    top = set(torch.sort(r, descending=True, stable=True).indices[:8].tolist())
    assert top <= set(out.index.tolist())
    sim = np.clip(_cos(tokens), 0, None).astype(np.float32)
    rest = select_by_coverage(sim, r.float().numpy(), 16, 0.5, preselected=sorted(top, key=lambda i: -r[i]))
    assert out.index.tolist() == sorted(rest)


def test_id_pruner_text_and_cls_importance_are_mixed():
    tokens, sig = make_signals(64, 8, seed=4)
    text_only = tokencomp.compress(tokens, 8, "id_pruner", text=sig["text"], rho=1.0).index
    cls_only = tokencomp.compress(tokens, 8, "id_pruner", cls_attn=sig["cls_attn"], rho=1.0).index
    rel = _minmax(_cos(torch.cat([tokens, sig["text"]]))[:64, 64:].mean(axis=1))
    both_ref = (rel + _minmax(sig["cls_attn"].double().numpy())) / 2
    both = tokencomp.compress(tokens, 8, "id_pruner", text=sig["text"], cls_attn=sig["cls_attn"], rho=1.0).index
    assert both.tolist() == sorted(np.argsort(-both_ref, kind="stable")[:8].tolist())
    assert not torch.equal(text_only, cls_only)


# --- VisionZip, VisPruner, pool: naive re-statements ----------------------------------------------------------------


def test_visionzip_matches_hand_rolled_merge():
    tokens, sig = make_signals(64, 8, seed=5)
    k, n_dom, n_ctx = 16, 14, 2  # round(16 * 54 / 64) = 14
    attn = sig["cls_attn"].numpy()
    dominant = list(np.argsort(-attn, kind="stable")[:n_dom])
    rest = sorted(set(range(64)) - set(dominant))
    step = len(rest) // n_ctx
    targets = [rest[i] for i in range(0, len(rest), step)][:n_ctx]
    keys = _cos(torch.cat([sig["keys"]]))
    groups = {t: [] for t in targets}
    for i in rest:
        if i not in targets:
            groups[max(targets, key=lambda t: (keys[i][t], -targets.index(t)))].append(i)
    x = tokens.double().numpy()
    expected = {i: x[i] for i in dominant}
    for t, members in groups.items():
        expected[t] = x[t] + (x[members].mean(axis=0) if members else 0)
    out = tokencomp.compress(tokens, k, "visionzip", cls_attn=sig["cls_attn"], keys=sig["keys"])
    assert out.index.tolist() == sorted(expected)
    assert np.allclose(out.tokens.double().numpy(), np.stack([expected[i] for i in sorted(expected)]), atol=1e-5)
    for t, members in groups.items():
        slot = out.index.tolist().index(t)
        assert (out.assignment[members] == slot).all()


def test_vispruner_matches_naive_dedup():
    tokens, sig = make_signals(64, 8, seed=6)
    k = 20
    attn = sig["cls_attn"].numpy()
    important = list(np.argsort(-attn, kind="stable")[:10])
    remain = sorted(set(range(64)) - set(important))
    s = _cos(tokens)
    while len(remain) > k - 10:
        even, odd = remain[0::2], remain[1::2]
        dup = [max(s[e][o] for o in odd) for e in even]
        drop = min(8, len(remain) - (k - 10))
        victims = {even[i] for i in sorted(range(len(even)), key=lambda i: (-dup[i], i))[:drop]}
        remain = [i for i in remain if i not in victims]
    out = tokencomp.compress(tokens, k, "vispruner", cls_attn=sig["cls_attn"])
    assert out.index.tolist() == sorted(important + remain)


def test_pool_64_of_24x24_is_a_3x3_average_pool():
    tokens = torch.randn(576, 8)
    out = tokencomp.compress(tokens, 64, "pool")
    grid = tokens.T.reshape(1, 8, 24, 24)
    expected = F.avg_pool2d(grid, 3).reshape(8, 64).T
    assert torch.allclose(out.tokens, expected, atol=1e-6)
    assert out.index[:3].tolist() == [0, 3, 6] and out.index[8].item() == 3 * 24


def test_pool_odd_budget_keeps_uniformly_strided_cells():
    tokens = torch.randn(576, 8)
    assert (out := tokencomp.compress(tokens, 30, "pool")).tokens.shape == (30, 8)
    assert int((out.assignment == -1).sum()) == 0  # 30 = 5 x 6 cells exactly
    out = tokencomp.compress(tokens, 31, "pool")  # 6x6 pooled grid (36 cells), 31 kept at a uniform stride
    assert out.tokens.shape == (31, 8)
    assert int((out.assignment == -1).sum()) == 5 * 16  # 5 dropped cells of 4x4 patches


def test_random_is_a_uniform_draw():
    tokens = torch.randn(64, 4)
    counts = torch.zeros(64)
    for seed in range(400):
        counts[tokencomp.compress(tokens, 16, "random", seed=seed).index] += 1
    assert counts.min() > 50 and counts.max() < 150  # expectation 100 each
