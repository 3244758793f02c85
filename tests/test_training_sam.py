"""SAM-family step strategies: ρ = 0 is the base optimizer bit for bit, pass counts, S2-SAM's stale ascent
direction, the zeroth-order estimate's unbiasedness on a quadratic, and the ablations."""

import pytest
import torch

from tokencomp.training.sam_steps import BaseStep, S2SAMStep, SAMStep, ZOSAMStep
from tokencomp.training.sparsifier import Sparsifier


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _train(make_step, steps: int = 5) -> tuple[torch.nn.Module, object]:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = make_step(list(model.parameters()), opt)
    for x, y in _batches(steps):
        strategy.step(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y))
    return model, strategy


def _same_bits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p.view(torch.int32), q.view(torch.int32)) for p, q in zip(a.parameters(),
                                                                                    b.parameters(), strict=True))


@pytest.mark.parametrize("make", [
    lambda p, o: SAMStep(p, o, rho=0.0),
    lambda p, o: S2SAMStep(p, o, rho=0.0),
    lambda p, o: ZOSAMStep(p, o, rho=0.0, q=2),
    lambda p, o: ZOSAMStep(p, o, rho=0.0, direction="random"),
    lambda p, o: ZOSAMStep(p, o, rho=0.0, direction="exact"),
], ids=["sam", "s2sam", "zosam", "random", "exact"])
def test_rho_zero_reproduces_base_optimizer_bit_for_bit(make):
    base, _ = _train(BaseStep)
    other, _ = _train(make)
    assert _same_bits(base, other)


def test_positive_rho_changes_the_trajectory():
    base, _ = _train(BaseStep)
    other, _ = _train(lambda p, o: SAMStep(p, o, rho=0.5))
    assert not _same_bits(base, other)


@pytest.mark.parametrize("make,forwards,backwards", [
    (BaseStep, 1, 1),
    (lambda p, o: SAMStep(p, o, rho=0.1), 2, 2),
    (lambda p, o: S2SAMStep(p, o, rho=0.1), 1, 1),
    (lambda p, o: ZOSAMStep(p, o, rho=0.1, q=3), 2 * 3 + 1, 1),
    (lambda p, o: ZOSAMStep(p, o, rho=0.1, direction="random"), 1, 1),
    (lambda p, o: ZOSAMStep(p, o, rho=0.1, direction="exact"), 2, 2),
], ids=["base", "sam", "s2sam", "zosam-q3", "random", "exact"])
def test_pass_counts_per_step(make, forwards, backwards):
    calls = {"forward": 0}
    model = _mlp()
    model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = make(list(model.parameters()), opt)
    for x, y in _batches(4):
        strategy.step(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y))
    assert (strategy.forwards, strategy.backwards) == (4 * forwards, 4 * backwards)
    assert calls["forward"] == 4 * forwards  # the counter matches the forwards the model really ran


def _quadratic(dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return a @ a.T + torch.eye(dim, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)


def test_s2sam_epsilon_is_parallel_to_previous_gradient_not_current():
    h, b = _quadratic()
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    strategy = S2SAMStep([w], torch.optim.SGD([w], lr=0.05), rho=0.1)
    loss_fn = lambda: 0.5 * w @ h @ w + b @ w
    strategy.step(loss_fn)
    assert strategy.last_epsilon is None  # no perturbation at the first step
    for _ in range(4):
        previous = strategy.previous_grads[0].clone()
        current = (h @ w + b).detach()  # the exact gradient at this step's weights
        strategy.step(loss_fn)
        eps = strategy.last_epsilon[0]
        torch.testing.assert_close(eps, 0.1 * previous / previous.norm(), rtol=1e-9, atol=1e-12)
        cos_current = torch.nn.functional.cosine_similarity(eps, current, dim=0)
        assert cos_current < 0.999


def test_zo_estimate_is_unbiased_on_a_quadratic_as_q_grows():
    h, b = _quadratic()
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    exact = (h @ w + b).detach()
    loss_fn = lambda: 0.5 * w @ h @ w + b @ w
    errors = {}
    for q in (4, 4000):
        strategy = ZOSAMStep([w], torch.optim.SGD([w], lr=0.0), q=q, mu=1e-3, seed=7)
        estimate = strategy.zo_estimate(loss_fn)[0]
        errors[q] = float((estimate - exact).norm() / exact.norm())
    assert errors[4000] < 0.1
    assert errors[4000] < errors[4]


def test_zo_cosine_is_logged_without_counting_as_method_passes():
    h, b = _quadratic()
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    strategy = ZOSAMStep([w], torch.optim.SGD([w], lr=0.01), q=2000, rho=0.05, measure_cosine=True)
    for _ in range(3):
        strategy.step(lambda: 0.5 * w @ h @ w + b @ w)
    assert len(strategy.cosines) == 3 and all(c > 0.9 for c in strategy.cosines)
    assert strategy.diagnostic_passes == 3
    assert (strategy.forwards, strategy.backwards) == (3 * (2 * 2000 + 1), 3)


def test_exact_direction_ablation_is_sam():
    sam, _ = _train(lambda p, o: SAMStep(p, o, rho=0.3))
    exact, _ = _train(lambda p, o: ZOSAMStep(p, o, rho=0.3, direction="exact"))
    assert _same_bits(sam, exact)


def test_zo_directions_restricted_to_active_weights():
    model = _mlp()
    weights = {"0": model[0].weight, "2": model[2].weight}
    sparsifier = Sparsifier(weights, 0.3, generator=torch.Generator().manual_seed(0))
    sparsifier.apply()
    strategy = ZOSAMStep(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), q=2,
                         sparsifier=sparsifier)
    x, y = _batches(1)[0]
    estimate = strategy.zo_estimate(lambda: torch.nn.functional.cross_entropy(model(x), y))
    by_param = dict(zip((id(p) for p in model.parameters()), estimate, strict=True))
    for name, weight in weights.items():
        assert torch.count_nonzero(by_param[id(weight)][~sparsifier.masks[name]]) == 0
        assert torch.count_nonzero(by_param[id(weight)][sparsifier.masks[name]]) > 0


@pytest.mark.parametrize("masked", [False, True])
def test_s2sam_perturbation_covers_pruned_weights_unless_masked(masked):
    model = _mlp()
    weights = {"0": model[0].weight}
    sparsifier = Sparsifier(weights, 0.3, generator=torch.Generator().manual_seed(0))
    sparsifier.apply()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = S2SAMStep(list(model.parameters()), opt, rho=0.5, sparsifier=sparsifier, mask_perturbation=masked)
    for x, y in _batches(2):
        strategy.step(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y))
    eps = strategy.last_epsilon[0]
    pruned_nonzero = int(torch.count_nonzero(eps[~sparsifier.masks["0"]]))
    assert (pruned_nonzero == 0) == masked


def test_bad_direction_is_named():
    with pytest.raises(ValueError, match="'sideways'"):
        ZOSAMStep([torch.nn.Parameter(torch.zeros(2))], torch.optim.SGD([torch.zeros(2)], lr=0.1),
                  direction="sideways")
