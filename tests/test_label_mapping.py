"""Label mappings (training/label_mapping.py) against hand-computed values and synthetic source classifiers
whose true source -> target correspondence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokencomp.training import label_mapping as lm


def synthetic(groups: list[list[int]], n_source: int, n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Source probabilities [n, S] and labels [n]: a target-class-t sample puts a strong logit on one source
    class drawn from groups[t], the rest is Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(groups), (n,), generator=g)
    logits = torch.randn(n, n_source, generator=g)
    for i, t in enumerate(labels.tolist()):
        group = groups[t]
        logits[i, group[int(torch.randint(0, len(group), (1,), generator=g))]] += 5.0
    return logits.softmax(-1), labels


def test_flm_greedy_matches_hand_assignment():
    # largest count 5 at (s2, t0); then among rows {0, 1, 3} x cols {1}: 4 at (s0, t1)
    n = torch.tensor([[3.0, 4.0], [1.0, 0.0], [5.0, 4.5], [0.0, 2.0]])
    w = lm.frequency_mapping(n)
    assert w.argmax(0).tolist() == [2, 0]
    assert torch.equal(w.sum(0), torch.ones(2)) and int((w > 0).sum()) == 2


def test_flm_recovers_permutation_of_relabelled_copy():
    perm = [6, 2, 9, 0, 4]
    probs, labels = synthetic([[s] for s in perm], n_source=12)
    w = lm.estimate("flm", probs, labels, len(perm), generator=torch.Generator())
    assert w.argmax(0).tolist() == perm
    assert float((lm.target_log_scores(probs, w).argmax(1) == labels).float().mean()) > 0.95


def test_otlm_recovers_unions_where_one_to_one_flm_cannot():
    groups = [[0, 3, 7], [1, 5], [2, 8, 10]]
    probs, labels = synthetic(groups, n_source=12)
    # the union members hold about 0.9 of the source mass (logit +5 against 11 unit-Gaussian ones); a mass below
    # that leaves the dearest member of a union untransported (at 0.85, source 3 here)
    w_ot = lm.estimate("otlm", probs, labels, 3, generator=torch.Generator(), mass=0.95)
    w_flm = lm.estimate("flm", probs, labels, 3, generator=torch.Generator())
    for t, group in enumerate(groups):
        assert set(torch.nonzero(w_ot[:, t] > 0.1).flatten().tolist()) == set(group)  # the whole union, nothing else
        assert int((w_flm[:, t] > 0).sum()) == 1
    acc = {name: float((lm.target_log_scores(probs, w).argmax(1) == labels).float().mean())
           for name, w in (("otlm", w_ot), ("flm", w_flm))}
    assert acc["otlm"] > 0.95
    assert acc["flm"] < 0.75  # one source class per target sees only part of each union


@pytest.mark.parametrize("solver", ["exact", "entropic"])
@pytest.mark.parametrize("mass", [0.3, 0.7, 1.0])
def test_partial_plan_meets_marginal_and_mass_constraints(solver, mass):
    rng = np.random.default_rng(1)
    a = rng.random(9)
    a /= a.sum()
    b = rng.random(4)
    b /= b.sum()
    cost = rng.random((9, 4))
    plan = lm.partial_plan(a, b, cost, mass, solver)
    assert plan.shape == (9, 4)
    assert plan.min() >= -1e-6
    assert np.all(plan.sum(1) <= a + 1e-6) and np.all(plan.sum(0) <= b + 1e-6)
    assert abs(plan.sum() - mass) < 1e-6


def test_exact_partial_plan_moves_the_cheapest_mass():
    # brute force on a 2 x 2 problem: moving 0.5 costs least along the zero-cost diagonal entry (0, 0)
    a, b = np.array([0.5, 0.5]), np.array([0.5, 0.5])
    cost = np.array([[0.0, 1.0], [1.0, 2.0]])
    plan = lm.partial_plan(a, b, cost, 0.5, "exact")
    assert np.allclose(plan, [[0.5, 0.0], [0.0, 0.0]], atol=1e-9)


def test_bayesian_mapping_hand_values():
    n = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    w = lm.bayesian_mapping(n, lam=1.0)  # rows / (row sum + 1): [2/3, 0], [1/3, 1/3], [0, 0]; columns to 1
    assert torch.allclose(w, torch.tensor([[2 / 3, 0.0], [1 / 3, 1.0], [0.0, 0.0]]))


def test_topk_probability_counts_hand_values():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]])
    n = lm.topk_probability_counts(probs, torch.tensor([1, 1]), n_target=2, k=2)
    assert torch.allclose(n, torch.tensor([[0.0, 0.8], [0.0, 0.3], [0.0, 0.7]]))


def test_ot_cost_hand_values():
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.8, 0.2]])
    cost = lm.ot_cost(probs, torch.tensor([0, 0, 1]), 2)
    expected = -np.log(np.array([[0.3, 0.8], [0.7, 0.2]]))
    assert np.allclose(cost.numpy(), expected, atol=1e-9)


def test_random_mapping_is_injective_and_seeded():
    w1 = lm.random_mapping(20, 6, torch.Generator().manual_seed(3))
    w2 = lm.random_mapping(20, 6, torch.Generator().manual_seed(3))
    assert torch.equal(w1, w2)
    assert len(set(w1.argmax(0).tolist())) == 6 and torch.equal(w1.sum(0), torch.ones(6))


def test_label_map_file_maps_answers(tmp_path):
    w = lm.one_hot_map(torch.tensor([2, 0]), 3)
    path = lm.save_label_map(tmp_path / "map.json", w, ["red", "blue", "green"], ["warm", "cool"], question="q?",
                             mapping="flm")
    loaded = lm.load_label_map(path)
    assert lm.map_answer("Green", loaded) == "warm"
    assert lm.map_answer("red circle", loaded) == "cool"
    assert lm.map_answer("blue", loaded) is None and lm.map_answer("", loaded) is None


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="mass must be in"):
        lm.partial_plan(np.ones(2) / 2, np.ones(2) / 2, np.zeros((2, 2)), 1.5)
    with pytest.raises(ValueError, match="'sinkhorn'"):
        lm.partial_plan(np.ones(2) / 2, np.ones(2) / 2, np.zeros((2, 2)), 0.5, "sinkhorn")
    with pytest.raises(ValueError, match="'xlm'"):
        lm.estimate("xlm", torch.ones(2, 3) / 3, torch.tensor([0, 1]), 2, generator=torch.Generator())
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a label map"):
        lm.load_label_map(tmp_path / "bad.json")


def test_mapped_scorer_scores_the_mapped_label():
    label_map = {"labels": ["warm", "cool"], "sources": {"red": {"target": "warm"}, "blue": {"target": "cool"}}}
    score = lm.mapped_scorer(lambda prediction, sample: float(prediction == sample), label_map)
    assert score("Red", "warm") == 1.0 and score("blue", "warm") == 0.0
    assert score("green", "") == 1.0  # unmapped answers score as the empty string
