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
from tokencomp.methods.id_pruner import ALPHA, BANDWIDTH, distinctness, objective, select_by_coverage


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
    mean_cos = (_cos(torch.cat([tokens, text]))[:16, 16:]).mean(axis=1)
    # the released normalisation: (x - min + 1e-6) / (max - min), without the released negation (see docstring)
    rel = (mean_cos - mean_cos.min() + 1e-6) / (mean_cos.max() - mean_cos.min())
    kernel = rel[:, None] * _cos(tokens) * rel[None, :]
    expected = sorted(_naive_logdet_greedy(kernel, 6))
    assert tokencomp.compress(tokens, 6, "cdpruner", text=text).index.tolist() == expected


def test_greedy_dpp_runs_to_full_depth_on_faint_relevance():
    # the released code's distinctive step: K picks by the DPP itself, with no guard that stops once gains fall
    # below a threshold. Relevance spans 1 .. 1e-3, so late gains are ~1e-6 of the first (a 1e-5 relative guard
    # stopped here early and filled the rest by relevance); the full-depth greedy equals the float64 log-det
    # greedy at every one of the 30 picks. Tokens sit in 5 tight clusters, so relevance alone keeps duplicates.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 64, generator=g)[torch.arange(40) % 5] + 0.2 * torch.randn(40, 64, generator=g)
    r = torch.logspace(0, -3, 40)[torch.randperm(40, generator=g)]
    kernel = r[:, None] * torch.from_numpy(_cos(x)).float() * r[None, :]
    picks = greedy_map_dpp(kernel, 30).tolist()
    reference = kernel.double().numpy()
    assert picks == _naive_logdet_greedy(reference, 30)
    last_gain = np.exp(np.linalg.slogdet(reference[np.ix_(picks, picks)])[1]
                       - np.linalg.slogdet(reference[np.ix_(picks[:-1], picks[:-1])])[1])
    assert last_gain < 1e-5 * reference.diagonal().max(), "a 1e-5 relative guard would have stopped before"


def test_greedy_dpp_stays_finite_past_the_kernel_rank():
    x = torch.randn(10, 3)  # rank 3: picks 4..6 have residuals of pure rounding
    kernel = torch.from_numpy(_cos(x)).float()
    picks = greedy_map_dpp(kernel, 6)
    assert len(set(picks.tolist())) == 6
    assert picks[:3].tolist() == _naive_logdet_greedy(kernel.double().numpy(), 3)


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


def _problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, sig = make_signals(n, 6, seed=seed)
    return torch.from_numpy(_cos(tokens)).clamp(min=0), torch.from_numpy(_minmax(sig["cls_attn"].double().numpy()))


def _naive_weights(cos: np.ndarray, bandwidth: float) -> np.ndarray:
    """Coverage weights by the definition, one token at a time: 1 / sum_v exp((cos_uv - 1) / bandwidth), normalised."""
    inverse = np.array([1 / sum(math.exp((c - 1) / bandwidth) for c in row) for row in cos])
    return inverse / inverse.sum()


def _naive_greedy(sim, r, k, alpha, weight=None) -> list[int]:
    picks: list[int] = []
    for _ in range(k):
        gains = {i: objective(sim, r, picks + [i], k, alpha, weight) for i in range(len(r)) if i not in picks}
        picks.append(max(gains, key=lambda i: (gains[i], -i)))
    return picks


def test_distinctness_matches_hand_computation():
    # three copies of one direction and one orthogonal token: densities 3 + e^-10 (twice 0 -> e^-10 each) ...
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e = math.exp(-1 / 0.1)
    inverse = np.array([1 / (3 + e)] * 3 + [1 / (1 + 3 * e)])
    expected = inverse / inverse.sum()  # ~ [1/6, 1/6, 1/6, 1/2]: the group weighs what the lone token does
    got = distinctness(tokencomp.base.cosine_matrix(x), 0.1)
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    assert abs(got[:3].sum().item() - got[3].item()) < 1e-4


@pytest.mark.parametrize("seed", range(3))
def test_distinctness_matches_naive_definition(seed):
    tokens, _ = make_signals(30, 6, seed=seed)
    cos = _cos(tokens)
    got = distinctness(torch.from_numpy(cos).float(), BANDWIDTH)
    assert np.allclose(got.numpy(), _naive_weights(cos, BANDWIDTH), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="bandwidth must be > 0, got 0"):
        distinctness(torch.from_numpy(cos).float(), 0)


def test_weighted_coverage_keeps_a_lone_token_where_uniform_keeps_a_second_large_group():
    # two groups of 20 identical tokens (cos 0.6 between them) and one token unlike both (a sign letter). Uniform
    # coverage: after one group, the other adds 20 x 0.4 = 8 > the lone token's 1. Distinctness weights give
    # each group about one token's worth, so the second group adds ~0.4 / 1.4 < the lone token's share.
    x = torch.tensor([[1.0, 0.5, 0.0]] * 20 + [[1.0, -0.5, 0.0]] * 20 + [[0.0, 0.0, 1.0]])
    sim = tokencomp.base.cosine_matrix(x).clamp(min=0)
    r = torch.zeros(len(x))
    w = distinctness(sim, BANDWIDTH)
    uniform = select_by_coverage(sim, r, 2, 0.0).tolist()
    kept = select_by_coverage(sim, r, 2, 0.0, weight=w).tolist()
    assert sorted(i // 20 for i in uniform) == [0, 1]  # one token of each group, the lone token left out
    assert kept[1] == 40 and kept[0] < 40
    assert _naive_greedy(sim.double(), r.double(), 2, 0.0, w.double())[1] == 40


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, ALPHA, 0.5, 0.9])
def test_lazy_greedy_equals_naive_greedy(seed, alpha):
    sim, r = _problem(40, seed)  # float64 reference; the method runs in float32
    assert select_by_coverage(sim.float(), r.float(), 10, alpha).tolist() == _naive_greedy(sim, r, 10, alpha)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, ALPHA, 0.5])
def test_lazy_greedy_equals_naive_greedy_with_distinctness_weights(seed, alpha):
    sim, r = _problem(40, seed)
    w = torch.from_numpy(_naive_weights(sim.numpy(), BANDWIDTH))
    picks = select_by_coverage(sim.float(), r.float(), 10, alpha, weight=w.float()).tolist()
    assert picks == _naive_greedy(sim, r, 10, alpha, w)


def test_batched_lazy_greedy_equals_naive_greedy_per_image():
    problems = [_problem(40, seed) for seed in range(3)]
    sim = torch.stack([p[0] for p in problems]).float()
    r = torch.stack([p[1] for p in problems]).float()
    w = distinctness(sim, BANDWIDTH)
    picks = select_by_coverage(sim, r, 10, 0.5, weight=w)
    assert picks.shape == (3, 10)
    for b, (s, rb) in enumerate(problems):
        assert picks[b].tolist() == _naive_greedy(s, rb, 10, 0.5, w[b].double()), b


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_is_monotone_and_greedy_is_within_1_minus_1_over_e(seed, weighted):
    n, k, alpha = 12, 4, 0.5
    sim, r = _problem(n, seed)
    w = torch.from_numpy(_naive_weights(sim.numpy(), BANDWIDTH)) if weighted else None
    values = {}
    for size in range(k + 1):
        for subset in itertools.combinations(range(n), size):
            values[subset] = objective(sim, r, list(subset), k, alpha, w)
    for subset, value in values.items():  # monotone: adding any element never lowers F
        for extra in range(n):
            if extra not in subset and len(subset) < k:
                assert values[tuple(sorted(subset + (extra,)))] >= value - 1e-9
    optimum = max(v for s, v in values.items() if len(s) == k)
    picks = select_by_coverage(sim.float(), r.float(), k, alpha, weight=None if w is None else w.float())
    assert objective(sim, r, picks.tolist(), k, alpha, w) >= (1 - 1 / math.e) * optimum


def test_id_pruner_spends_rho_k_on_top_importance_then_coverage():
    tokens, sig = make_signals(64, 8, seed=2)
    r = torch.from_numpy(_minmax(sig["cls_attn"].numpy()))
    rho = 0.5
    out = tokencomp.compress(tokens, 16, "id_pruner", cls_attn=sig["cls_attn"], rho=rho)
    top = torch.sort(r, descending=True, stable=True).indices[:8]
    assert set(top.tolist()) <= set(out.index.tolist())
    cos = _cos(tokens)
    w = torch.from_numpy(_naive_weights(cos, BANDWIDTH)).float()
    rest = select_by_coverage(torch.from_numpy(cos).float(), r.float(), 16, ALPHA, preselected=top, weight=w)
    assert out.index.tolist() == sorted(rest.tolist())


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


def _naive_vispruner(attn: list[float], feats: torch.Tensor, k: int) -> list[int]:
    """The released rounds written as plain loops: floor(K / 2) by attention, then the rest in descending-attention
    order, even positions scored by max cosine to odd ones, the top min(8, excess) evens dropped, survivors in
    descending-score order followed by the odds."""
    s = _cos(feats)
    order = sorted(range(len(attn)), key=lambda i: (-attn[i], i))
    n_imp = k // 2
    residual = order[n_imp:]
    while len(residual) > k - n_imp:
        drop = min(8, len(residual) - (k - n_imp))
        even, odd = residual[0::2], residual[1::2]
        dup = {e: max(s[e][o] for o in odd) for e in even}
        ranked = sorted(range(len(even)), key=lambda i: (-dup[even[i]], i))
        residual = [even[i] for i in ranked[drop:]] + odd
    return order[:n_imp] + residual


def test_visionzip_merges_before_the_projector_in_the_serving_step():
    # the released code merges vision features and projects the K results; a mean of projections differs
    from tokencomp.serving.compression import compress_image
    from tokencomp.serving.spec import Spec

    features, sig = make_signals(64, 8, seed=5)
    torch.manual_seed(0)
    project = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.GELU(), torch.nn.Linear(12, 12))
    with torch.no_grad():
        projected = project(features)
        out = compress_image(projected, Spec("visionzip", 16), cls_attn=sig["cls_attn"], keys=sig["keys"],
                             features=features, project=project, grid=(8, 8), text=None)
        merged = tokencomp.compress(features, 16, "visionzip", cls_attn=sig["cls_attn"], keys=sig["keys"])
        after = tokencomp.compress(projected, 16, "visionzip", cls_attn=sig["cls_attn"], keys=sig["keys"])
        assert torch.equal(out.index, merged.index) and torch.equal(out.assignment, merged.assignment)
        assert torch.allclose(out.tokens, project(merged.tokens), atol=1e-6)
        assert not torch.allclose(out.tokens, after.tokens, atol=1e-3)


@pytest.mark.parametrize("k", [20, 21, 40])
def test_vispruner_matches_the_released_rounds(k):
    tokens, sig = make_signals(64, 8, seed=6)
    feats = torch.randn(64, 12, generator=torch.Generator().manual_seed(3))  # pre-projector features
    expected = _naive_vispruner(sig["cls_attn"].tolist(), feats, k)
    out = tokencomp.compress(tokens, k, "vispruner", cls_attn=sig["cls_attn"], features=feats)
    assert out.index.tolist() == sorted(expected)
    assert tokencomp.compress(tokens, k, "vispruner", cls_attn=sig["cls_attn"]).index.tolist() == sorted(
        _naive_vispruner(sig["cls_attn"].tolist(), tokens, k)), "without features: the tokens' own cosines"


def test_vispruner_splits_in_descending_attention_order_not_spatial_order():
    # four tokens left after the important one (0) and one to drop. Attention order 4, 1, 3, 2 makes 4 and 3 the
    # evens, 1 and 2 the odds: token 3 (cosine 0.8 to token 2) goes, and the exact duplicates 1 and 2 both stay.
    # Spatial order would make 1 and 3 the evens and drop token 1 (cosine 1 to token 2): kept 0, 2, 3, 4.
    feats = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1]])
    attn = torch.tensor([0.5, 0.2, 0.05, 0.1, 0.3])
    out = tokencomp.compress(torch.randn(5, 4), 4, "vispruner", cls_attn=attn, features=feats, important_ratio=0.25)
    assert out.index.tolist() == [0, 1, 2, 4]


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
