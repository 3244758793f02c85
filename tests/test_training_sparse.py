"""Sparsifier, SET, RigL and BiDST: budgets by hand, the per-step invariants (nnz = budget, bitwise-zero pruned
weights, zero optimizer state at pruned coordinates) under every step strategy and mask updater, RigL's schedule,
and BiDST's hypergradient against a finite-difference one on a ridge problem solved exactly."""

import math

import pytest
import torch

from tokencomp.training.bidst import BiDSTUpdate, mask_hypergradient
from tokencomp.training.dynamic_sparse import RigLUpdate, SETUpdate, prune_and_grow
from tokencomp.training.sam_steps import BaseStep, S2SAMStep, SAMStep, ZOSAMStep
from tokencomp.training.sparsifier import Sparsifier, layer_budgets


def test_uniform_and_erk_budgets_by_hand():
    shapes = {"a": torch.Size([10, 20]), "b": torch.Size([20, 5])}
    assert layer_budgets(shapes, 0.5, "uniform") == {"a": 100, "b": 50}
    # ERK: densities eps * (10+20)/200 and eps * (20+5)/100 with eps = 150 / (30 + 25)
    eps = 150 / 55
    assert layer_budgets(shapes, 0.5, "erk") == {"a": round(eps * 30), "b": round(eps * 25)}


def test_erk_caps_small_layers_at_dense_and_respreads():
    shapes = {"tiny": torch.Size([2, 2]), "big": torch.Size([100, 100])}
    # tiny would get density 24.5: it goes dense (4) and big takes the rest of 0.5 * 10004 = 5002
    assert layer_budgets(shapes, 0.5, "erk") == {"tiny": 4, "big": 4998}


def test_bad_density_and_distribution_are_named():
    with pytest.raises(ValueError, match="1.5"):
        layer_budgets({"a": torch.Size([2, 2])}, 1.5)
    with pytest.raises(ValueError, match="'powerlaw'"):
        layer_budgets({"a": torch.Size([2, 2])}, 0.5, "powerlaw")


def test_prune_and_grow_by_hand():
    weight = torch.nn.Parameter(torch.tensor([[0.5, -0.1, 0.0], [0.0, 2.0, 0.0]]))
    sparsifier = Sparsifier({"w": weight}, 0.5)
    sparsifier.set_mask("w", torch.tensor([[True, True, False], [False, True, False]]))
    grow = torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 0.5]])
    prune_and_grow(sparsifier, "w", 1, grow)
    # -0.1 is the smallest active magnitude; the largest grow score among inactive positions is 3.0 at [0, 2]
    assert sparsifier.masks["w"].tolist() == [[True, False, True], [False, True, False]]


def test_rigl_schedule():
    rigl = RigLUpdate(total_steps=400, delta_t=100, alpha=0.3)
    assert rigl.fraction(0) == pytest.approx(0.3)
    assert rigl.fraction(150) == pytest.approx(0.15)
    assert rigl.fraction(300) == 0.0
    assert [s for s in range(400) if rigl.due(s)] == [100, 200]  # stops at 75 % of 400


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def _check_invariants(sparsifier: Sparsifier, optimizer: torch.optim.Optimizer) -> None:
    for name, weight in sparsifier.weights.items():
        mask = sparsifier.masks[name]
        assert int(mask.sum()) == sparsifier.budgets[name]
        assert int(torch.count_nonzero(weight.detach()) - torch.count_nonzero(weight.detach()[mask])) == 0
        assert torch.all(weight.detach()[~mask].view(torch.int32) == 0)  # +0.0, bit for bit
        for value in optimizer.state.get(weight, {}).values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                assert torch.all(value[~mask] == 0)


STRATEGIES = {
    "base": lambda p, o, s: BaseStep(p, o, sparsifier=s),
    "sam": lambda p, o, s: SAMStep(p, o, rho=0.1, sparsifier=s),
    "s2sam": lambda p, o, s: S2SAMStep(p, o, rho=0.5, sparsifier=s),
    "zosam": lambda p, o, s: ZOSAMStep(p, o, rho=0.1, q=1, sparsifier=s),
}
OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
              "adam": lambda p: torch.optim.Adam(p, lr=1e-2)}


@pytest.mark.parametrize("updater", ["static", "set", "rigl", "bidst"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_invariants_hold_after_every_step(updater, strategy, optimizer):
    model = _model()
    weights = {f"{i}": model[i].weight for i in (0, 2, 4)}
    sparsifier = Sparsifier(weights, 0.2, "erk", generator=torch.Generator().manual_seed(1))
    bidst = BiDSTUpdate(sparsifier, interval=2, score_lr=1.0) if updater == "bidst" else None
    opt = OPTIMIZERS[optimizer](model.parameters())
    sparsifier.apply(opt)
    step = STRATEGIES[strategy](list(model.parameters()), opt, sparsifier)
    rigl = RigLUpdate(total_steps=12, delta_t=2, alpha=0.5)
    set_update = SETUpdate(zeta=0.3, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    moved = []
    for t in range(12):
        x, y = torch.randn(32, 10, generator=g), torch.randint(0, 4, (32,), generator=g)
        before = {n: m.clone() for n, m in sparsifier.masks.items()}
        step.step(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y))
        _check_invariants(sparsifier, opt)
        if updater in ("rigl", "bidst"):  # both read the dense gradient of a fresh backward
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if updater == "rigl":
                rigl(t, sparsifier, opt)
            else:
                bidst(t, opt)
        elif updater == "set" and t % 4 == 3:
            set_update(sparsifier, opt)
        _check_invariants(sparsifier, opt)
        moved.append(any(not torch.equal(before[n], m) for n, m in sparsifier.masks.items()))
    assert any(moved) == (updater != "static")


def _ridge_theta(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Exact θ*(m) = argmin ½‖X (m ⊙ θ) − y‖²/n + γ/2 ‖θ‖² for a continuous mask m: [D]."""
    n = x.shape[0]
    xm = x * mask
    return torch.linalg.solve(xm.T @ xm / n + gamma * torch.eye(x.shape[1], dtype=x.dtype), xm.T @ y / n)


def _upper_loss(x, y, mask, gamma) -> torch.Tensor:
    theta = _ridge_theta(x, y, mask, gamma)
    return 0.5 * ((x @ (mask * theta) - y) ** 2).mean()


@pytest.mark.parametrize("seed", range(5))
def test_bidst_hypergradient_agrees_with_finite_differences_on_ridge(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = x @ torch.randn(12, generator=g, dtype=torch.float64) + 0.1 * torch.randn(40, generator=g,
                                                                                    dtype=torch.float64)
    gamma = 0.5
    mask = (torch.rand(12, generator=g) < 0.5).to(torch.float64)
    theta = _ridge_theta(x, y, mask, gamma)
    grad = x.T @ (x @ (mask * theta) - y) / x.shape[0]  # ∂L/∂z at z = m ⊙ θ*(m)
    h = mask_hypergradient(theta, mask, grad, gamma)
    step = 1e-6
    finite = torch.stack([(_upper_loss(x, y, mask + step * e, gamma) - _upper_loss(x, y, mask - step * e, gamma))
                          / (2 * step) for e in torch.eye(12, dtype=torch.float64)])
    cosine = float(torch.nn.functional.cosine_similarity(h, finite, dim=0))
    assert cosine > 0, f"cos(h, finite difference) = {cosine}"


def test_bidst_hysteresis_keeps_masks():
    model = _model()
    weights = {"0": model[0].weight}
    sparsifier = Sparsifier(weights, 0.3, generator=torch.Generator().manual_seed(1))
    bidst = BiDSTUpdate(sparsifier, interval=1, score_lr=1.0, hysteresis=math.inf)
    sparsifier.apply()
    before = sparsifier.masks["0"].clone()
    for t in range(1, 4):
        model.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        assert not bidst(t)
    assert torch.equal(before, sparsifier.masks["0"])
