"""Reproduction study of SAM / S2-SAM / ZO-SAM and SET / RigL / BiDST on scikit-learn's digits with label noise.

    tokencomp train sparse-sam-study --out training/reports/sparse_sam [--seeds 5] [--epochs 30] [--smoke]

Data: the 1,797 8x8 digits shipped in scikit-learn, a fixed 80/20 split, 30 % of training labels replaced by a
uniformly random other class (per seed); accuracy is on the clean test labels. Model: MLP 64-128-128-10 (ReLU),
SGD (momentum 0.9, weight decay 5e-4), batch 64. Sparse runs mask the three weight matrices with ERK budgets.

Part A, SAM family, dense and 90 % sparse (static random mask): SGD, SAM, S2-SAM, ZO-SAM and its two ablations
(same ρ along a random direction; same ρ along the exact gradient), at equal epochs and at equal gradient
evaluations (backward passes: SAM and the exact ablation get half the steps). Part B, mask updaters at 90 / 95 %:
static, SET, RigL, BiDST, each with the base step and with S2-SAM, at equal epochs. Per run: clean test accuracy,
random-perturbation sharpness (filter-normalised, radius 0.05, 10 directions, on the noisy training set), top
Hessian eigenvalue (30 power iterations), wall time. Writes `results.json`, `report.md` and PNG plots to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tokencomp.training.bidst import BiDSTUpdate
from tokencomp.training.dynamic_sparse import RigLUpdate, SETUpdate
from tokencomp.training.flatness import perturbation_sharpness, top_hessian_eigenvalue
from tokencomp.training.sam_steps import BaseStep, S2SAMStep, SAMStep, ZOSAMStep
from tokencomp.training.sparsifier import Sparsifier

BATCH = 64
NOISE = 0.3
STEPS = {"sgd": "SGD", "sam": "SAM", "s2sam": "S2-SAM", "zosam": "ZO-SAM", "zo-random": "ZO-SAM random dir.",
         "zo-exact": "ZO-SAM exact grad."}
BACKWARDS_PER_STEP = {"sgd": 1, "sam": 2, "s2sam": 1, "zosam": 1, "zo-random": 1, "zo-exact": 2}
UPDATERS = ("static", "set", "rigl", "bidst")


@dataclass(frozen=True)
class Run:
    step: str
    density: float
    updater: str = "static"
    budget: str = "epochs"  # "epochs" or "gradients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, plots")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rho", type=float, default=0.05, help="ρ for SAM, S2-SAM and ZO-SAM alike")
    parser.add_argument("--q", type=int, default=4, help="ZO-SAM directions per step")
    parser.add_argument("--mu", type=float, default=1e-3, help="ZO-SAM smoothing radius")
    parser.add_argument("--smoke", action="store_true", help="2 seeds, 2 epochs, a subset of runs (seconds)")


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train x [1437, 64], noisy train y, test x [360, 64], clean test y; the split is fixed, the noise per seed."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    g = torch.Generator().manual_seed(1000 + seed)
    noisy = y[train].clone()
    flip = torch.rand(len(noisy), generator=g) < NOISE
    # a uniformly random *other* class: add 1..9 mod 10
    noisy[flip] = (noisy[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=g)) % 10
    return x[train], noisy, x[test], y[test]


def _model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                               torch.nn.ReLU(), torch.nn.Linear(128, 10))


def _strategy(name: str, params, opt, sparsifier, args, seed: int):
    if name == "sgd":
        return BaseStep(params, opt, sparsifier)
    if name == "sam":
        return SAMStep(params, opt, args.rho, sparsifier)
    if name == "s2sam":
        return S2SAMStep(params, opt, args.rho, sparsifier)
    direction = {"zosam": "zo", "zo-random": "random", "zo-exact": "exact"}[name]
    return ZOSAMStep(params, opt, args.rho, q=args.q, mu=args.mu, seed=seed, direction=direction,
                     sparsifier=sparsifier, measure_cosine=direction == "zo")


def train_one(run: Run, seed: int, args: argparse.Namespace) -> dict:
    """Train one configuration; returns its metrics."""
    xtr, ytr, xte, yte = _data(seed)
    model = _model(seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    sparsifier = None
    if run.density < 1.0:
        weights = {str(i): model[i].weight for i in (0, 2, 4)}
        sparsifier = Sparsifier(weights, run.density, "erk", generator=torch.Generator().manual_seed(seed))
    bidst = BiDSTUpdate(sparsifier, gamma=5e-4, score_lr=0.05, interval=25) if run.updater == "bidst" else None
    if sparsifier is not None:
        sparsifier.apply(opt)
    strategy = _strategy(run.step, params, opt, sparsifier, args, seed)
    per_epoch = math.ceil(len(xtr) / BATCH)
    total = args.epochs * per_epoch
    if run.budget == "gradients":
        total //= BACKWARDS_PER_STEP[run.step]
    rigl = RigLUpdate(total, delta_t=25, alpha=0.3)
    set_update = SETUpdate(0.3, generator=torch.Generator().manual_seed(seed))
    order = torch.Generator().manual_seed(2000 + seed)
    loss = torch.nn.functional.cross_entropy
    start = time.perf_counter()
    step = 0
    while step < total:
        perm = torch.randperm(len(xtr), generator=order)
        for i in range(0, len(xtr), BATCH):
            if step >= total:
                break
            xb, yb = xtr[perm[i:i + BATCH]], ytr[perm[i:i + BATCH]]
            strategy.step(lambda xb=xb, yb=yb: loss(model(xb), yb))
            if run.updater in ("rigl", "bidst") and (bidst is not None or rigl.due(step)):
                # the dense gradient these updaters read: one extra backward, counted below
                opt.zero_grad()
                loss(model(xb), yb).backward()
                strategy.forwards += 1
                strategy.backwards += 1
                if bidst is not None:
                    bidst(step, opt)
                else:
                    rigl(step, sparsifier, opt)
            step += 1
        if run.updater == "set" and step < 0.75 * total:
            set_update(sparsifier, opt)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((model(xte).argmax(1) == yte).float().mean())
    masks = {sparsifier.weights[n]: m for n, m in sparsifier.masks.items()} if sparsifier else None
    train_loss = lambda: loss(model(xtr), ytr)
    g = torch.Generator().manual_seed(3000 + seed)
    return {"accuracy": accuracy, "seconds": seconds, "steps": total, "backwards": strategy.backwards,
            "forwards": strategy.forwards,
            "sharpness": perturbation_sharpness(train_loss, params, 0.05, generator=g, masks=masks),
            "hessian": top_hessian_eigenvalue(train_loss, params, generator=g, masks=masks),
            "cosine": float(np.mean(strategy.cosines)) if getattr(strategy, "cosines", None) else None}


def runs(smoke: bool) -> list[Run]:
    """Part A then part B; the smoke list keeps one run of each kind of code path."""
    if smoke:
        return [Run("sgd", 1.0), Run("sam", 0.1, budget="gradients"), Run("zosam", 0.1),
                Run("s2sam", 0.1, "rigl"), Run("sgd", 0.1, "bidst"), Run("sgd", 0.05, "set")]
    part_a = [Run(s, d, budget=b) for d in (1.0, 0.1) for s in STEPS for b in ("epochs", "gradients")
              if b == "epochs" or BACKWARDS_PER_STEP[s] > 1]
    part_b = [Run(s, d, u) for d in (0.1, 0.05) for u in UPDATERS for s in ("sgd", "s2sam")]
    return part_a + part_b


def _label(run: Run) -> str:
    return f"{STEPS[run.step]}, density {run.density:g}, {run.updater}, equal {run.budget}"


def _summary(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def _plots(out: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    part_a = [(k, v) for k, v in results.items() if v["run"]["updater"] == "static" and v["run"]["step"] in STEPS
              and (v["run"]["density"] in (1.0, 0.1))]
    labels = [f"{STEPS[v['run']['step']]}\n{'dense' if v['run']['density'] == 1 else '90 %'}"
              f"{' eq.grad' if v['run']['budget'] == 'gradients' else ''}" for _, v in part_a]
    for ax, metric in zip(axes, ("accuracy", "sharpness", "hessian"), strict=True):
        means = [np.mean([s[metric] for s in v["seeds"]]) for _, v in part_a]
        stds = [np.std([s[metric] for s in v["seeds"]]) for _, v in part_a]
        ax.bar(range(len(means)), means, yerr=stds, capsize=3)
        ax.set_xticks(range(len(means)), labels, rotation=90, fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(out / "sam_family.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 5))
    part_b = [v for v in results.values() if v["run"]["density"] in (0.1, 0.05) and v["run"]["budget"] == "epochs"
              and v["run"]["step"] in ("sgd", "s2sam")]
    names = [f"{v['run']['updater']} {'+S2-SAM' if v['run']['step'] == 's2sam' else ''}\n"
             f"{1 - v['run']['density']:.0%}" for v in part_b]
    ax.bar(range(len(part_b)), [np.mean([s["accuracy"] for s in v["seeds"]]) for v in part_b],
           yerr=[np.std([s["accuracy"] for s in v["seeds"]]) for v in part_b], capsize=3)
    ax.set_xticks(range(len(part_b)), names, rotation=90, fontsize=7)
    ax.set_ylabel("clean test accuracy")
    fig.tight_layout()
    fig.savefig(out / "mask_updaters.png", dpi=110)
    plt.close(fig)


def _find(results: dict, step: str, density: float, updater: str = "static", budget: str = "epochs") -> list[dict]:
    return results[_label(Run(step, density, updater, budget))]["seeds"]


def _compare(a: list[dict], b: list[dict], metric: str, higher: bool) -> str:
    """Whether a beats b on `metric`: beyond noise means |Δmean| > 2 standard errors of the difference."""
    va, vb = [s[metric] for s in a], [s[metric] for s in b]
    delta = float(np.mean(va) - np.mean(vb))
    noise = 2 * math.sqrt(np.var(va, ddof=1) / len(va) + np.var(vb, ddof=1) / len(vb)) if len(va) > 1 else 0.0
    better = delta > 0 if higher else delta < 0
    if abs(delta) <= noise:
        word = "within noise"
    else:
        word = "yes" if better else "no, the opposite"
    return f"{word} (Δ = {delta:+.4f}, 2 s.e. = {noise:.4f})"


def verdicts(results: dict) -> list[str]:
    """One line per paper claim checked at this scale, computed from the results (full plan only)."""
    lines = []
    for density, name in ((1.0, "dense"), (0.1, "90 % sparse")):
        sgd = _find(results, "sgd", density)
        for step, budget in (("sam", "epochs"), ("sam", "gradients"), ("s2sam", "epochs"), ("zosam", "epochs")):
            other = _find(results, step, density, budget=budget)
            lines.append(f"- {STEPS[step]} vs SGD, {name}, equal {budget}: higher accuracy? "
                         f"{_compare(other, sgd, 'accuracy', True)}; flatter (λ_max)? "
                         f"{_compare(other, sgd, 'hessian', False)}; flatter (random sharpness)? "
                         f"{_compare(other, sgd, 'sharpness', False)}")
        ratio = np.mean([s["seconds"] for s in _find(results, "s2sam", density)]) / np.mean(
            [s["seconds"] for s in sgd])
        lines.append(f"- S2-SAM wall time / SGD, {name}: {ratio:.2f} (claim: about 1)")
        zo, random_dir = _find(results, "zosam", density), _find(results, "zo-random", density)
        lines.append(f"- ZO-SAM vs its random-direction ablation, {name}: higher accuracy? "
                     f"{_compare(zo, random_dir, 'accuracy', True)}; mean cos(ĝ, g) = "
                     f"{np.mean([s['cosine'] for s in zo]):.3f}")
    for density in (0.1, 0.05):
        for step in ("sgd", "s2sam"):
            runs_ = {u: _find(results, step, density, u) for u in UPDATERS}
            order = sorted(UPDATERS, key=lambda u: -np.mean([s["accuracy"] for s in runs_[u]]))
            lines.append(f"- {1 - density:.0%} sparse, {STEPS[step]} steps: accuracy order {' > '.join(order)} "
                         f"(BiDST paper: bidst >= rigl >= set > static); BiDST vs RigL: "
                         f"{_compare(runs_['bidst'], runs_['rigl'], 'accuracy', True)}")
        for updater in UPDATERS:
            with_s2sam, without = (_find(results, step, density, updater) for step in ("s2sam", "sgd"))
            lines.append(f"- S2-SAM plug-in on {updater} at {1 - density:.0%}: higher accuracy? "
                         f"{_compare(with_s2sam, without, 'accuracy', True)}")
    return lines


def _report(out: Path, results: dict, command: str) -> None:
    lines = ["# SAM-family and dynamic sparse training on digits with 30 % label noise", "",
             f"Command: `{command}`", "",
             ("Mean ± std over seeds. Accuracy on clean test labels; sharpness = mean loss increase under "
              "filter-normalised random perturbation of radius 0.05; λ_max = top Hessian eigenvalue of the training "
              "loss (active weights only for sparse runs); backwards/forwards are per run."), "",
             "| run | seeds | accuracy | sharpness | λ_max | backwards | forwards | seconds | cos(ĝ, g) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, value in results.items():
        seeds = value["seeds"]
        cos = [s["cosine"] for s in seeds if s["cosine"] is not None]
        lines.append(f"| {key} | {len(seeds)} | {_summary([s['accuracy'] for s in seeds])} | "
                     f"{_summary([s['sharpness'] for s in seeds])} | {_summary([s['hessian'] for s in seeds])} | "
                     f"{seeds[0]['backwards']} | {seeds[0]['forwards']} | "
                     f"{np.mean([s['seconds'] for s in seeds]):.1f} | {f'{np.mean(cos):.3f}' if cos else ''} |")
    if all(_label(run) in results for run in runs(smoke=False)):
        note = "Computed from the table: a difference counts only beyond two standard errors of the difference."
        lines += ["", "## Claims at this scale", "", note, "", *verdicts(results)]
    lines += ["", "![SAM family](sam_family.png)", "", "![mask updaters](mask_updaters.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.seeds, args.epochs = 2, 2
    if args.seeds < 1 or args.epochs < 1:
        raise SystemExit(f"error: need --seeds >= 1 and --epochs >= 1, got {args.seeds}, {args.epochs}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    plan = runs(args.smoke)
    results: dict = {}
    with tqdm(total=len(plan) * args.seeds, desc="runs") as bar:
        for run in plan:
            seeds = []
            for seed in range(args.seeds):
                seeds.append(train_one(run, seed, args))
                bar.update()
            results[_label(run)] = {"run": run.__dict__, "seeds": seeds}
    command = "tokencomp train sparse-sam-study " + shlex.join(sys.argv[3:] if sys.argv[1:2] == ["train"] else [])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _plots(args.out, results)
    _report(args.out, results, command)
    print(f"wrote {args.out / 'report.md'}")
    return 0
