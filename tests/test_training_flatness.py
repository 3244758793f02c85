"""Flatness measures against brute force: power iteration against the eigenvalues of the explicit Hessian, and
random-perturbation sharpness against its closed form on a quadratic."""

import torch

from tokencomp.training.flatness import perturbation_sharpness, top_hessian_eigenvalue


def test_top_hessian_eigenvalue_matches_explicit_hessian():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    w = torch.nn.Parameter(0.5 * torch.randn(3, 4, dtype=torch.float64))
    loss_of = lambda flat: torch.nn.functional.cross_entropy(x @ flat.view(3, 4).T, y)
    hessian = torch.autograd.functional.hessian(loss_of, w.detach().flatten())
    expected = float(torch.linalg.eigvalsh(hessian).abs().max())
    got = top_hessian_eigenvalue(lambda: loss_of(w.flatten()), [w], iterations=200)
    assert abs(got - expected) < 1e-6 * expected


def test_top_hessian_eigenvalue_inside_a_mask():
    h = torch.diag(torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64))
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    mask = torch.tensor([True, False, True])
    got = top_hessian_eigenvalue(lambda: 0.5 * w @ h @ w, [w], iterations=100, masks={w: mask})
    assert abs(got - 2.0) < 1e-9  # 5.0 sits on the pruned coordinate


def test_perturbation_sharpness_equals_explicit_average_and_restores_weights():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64))
    before = w.detach().clone()
    loss = lambda v: 0.5 * (v ** 4).sum()
    got = perturbation_sharpness(lambda: loss(w), [w], radius=0.1, directions=7,
                                 generator=torch.Generator().manual_seed(0))
    # by hand: the same draws, each row rescaled to its weight row's norm (5 and 1)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(7):
        d = torch.randn(2, 2, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * torch.tensor([[5.0], [1.0]], dtype=torch.float64)
        total += float(loss(before + 0.1 * d))
    assert abs(got - (total / 7 - float(loss(before)))) < 1e-9
    assert got > 0  # a convex loss rises on average
    assert torch.equal(w.detach(), before)
