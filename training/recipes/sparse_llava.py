"""Recipe: the shipped tiny LLaVA made sparse by BiDST + S2-SAM, RigL or one-shot magnitude pruning.

Each sparse model is scored with and without token pruning.

    tokencomp train sparse-llava --out runs/sparse [--methods bidst rigl magnitude]
        [--sparsities 0.5 0.7 0.9] [--grid bidst-90 rigl-90 ...] [--steps 50] [--eval-split test]
        [--eval-limit 1000] [--report training/reports/sparse_llava]

What is sparsified: every linear layer of the language model's decoder (q/k/v/o projections, gate/up/down MLP)
and both projector layers, to the same overall sparsity with per-layer budgets (`--distribution`, ERK by
default as in RigL and BiDST). The embeddings and the LM head (108 x 128) stay dense, as the first and last
layers do in RigL and BiDST. The vision tower is frozen: its feature-layer output is cached once per `--out`
for `--train-scenes` training scenes, and the projector + LLM train on whole images, `--questions` turns per
scene (each turn sees only the image and itself, as in the shipped recipe), answers only, AdamW (the shipped
optimizer), a tenth of the steps warm-up then a cosine to zero.

Every method starts from the same mask, each layer's largest-magnitude weights at its budget, and trains the
same `--steps` on the same batches:

- `magnitude`: that mask is kept (one-shot magnitude pruning + fine-tuning).
- `rigl`: every `--delta-t` steps until 75 % of training, RigL's cosine-decayed fraction of each layer's
  active weights is dropped by magnitude and as many grown by dense-gradient magnitude
  (`training/dynamic_sparse.py`).
- `bidst`: BiDST's mask hypergradient moves continuous scores every step, projected to the exact per-layer
  top-k every `--delta-t` steps (`training/bidst.py`; scores start at |w|, so its first mask is the same),
  with S2-SAM steps (`training/sam_steps.py`, ρ = `--rho`, the perturbation over every weight as in the
  released code). γ = `--gamma` (AdamW's weight decay: the lower level's regulariser). The paper gives no
  score learning rate for this scale; `--score-lr` 16 is set so that over the default 50 steps the scores of
  the weights with the largest hypergradients (90th percentile of |h|, 6e-5, measured on one batch of the
  shipped model) move by about the median weight magnitude (0.047), the scale the scores start at: 16 x 50 x
  6e-5 = 0.048. Not tuned.
- `dense`: no mask, the same fine-tuning (a control: what the steps alone do to the model).

Defaults are sized for the shared 2-core machine (about 10 minutes a model there under load): 50 steps of 4
scenes x 16 questions, RigL updates and BiDST projections every 10 steps. The dense gradient RigL and BiDST
read is the one the step itself computed, copied just before the sparsifier masks it (`_GradientTap`): no
extra backward. For BiDST that gradient is S2-SAM's, taken at the perturbed weights; the paper does not say
which point its hypergradient uses with S2-SAM.

Each model is saved under `OUT/<method>-<sparsity %>/` in the llava-hf layout (`tokencomp serve PATH` serves
it unchanged): dense tensors holding exact zeros (+0.0), and a model card (README.md) with the zeros of every
tensor as read back from the saved file. Then, unless `--no-eval`, each model (and the shipped one) is scored
by `tokencomp eval --in-process` without pruning and with ID-Pruner at `--budgets`, and the flatness of each
is measured (filter-normalised random-perturbation sharpness of the validation loss, inside the model's own
mask). With `--report DIR`, report.md and sparse_llava.png go there. Every stage resumes: a saved model or an
eval log is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.eval.cluster_bootstrap import statistic_interval
from tokencomp.training import scenes
from tokencomp.training.bidst import BiDSTUpdate
from tokencomp.training.dynamic_sparse import RigLUpdate
from tokencomp.training.flatness import perturbation_sharpness
from tokencomp.training.llava_hf import llava_hf_key, save_llava_hf
from tokencomp.training.llava_loss import lm_loss
from tokencomp.training.llava_parts import linear_weights
from tokencomp.training.optimizers import adamw
from tokencomp.training.recipes.tiny_llava import cache_features, validate
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence
from tokencomp.training.sam_steps import BaseStep, S2SAMStep
from tokencomp.training.sparsifier import DISTRIBUTIONS, Sparsifier, top_k_mask

METHODS = ("bidst", "rigl", "magnitude", "dense")
LABELS = {"bidst": "BiDST + S2-SAM", "rigl": "RigL", "magnitude": "one-shot magnitude",
          "dense": "dense fine-tuned", "shipped": "shipped (dense)"}
DEFAULT_MODEL = "models/tokencomp-tiny-llava"
SHARPNESS_RADIUS = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/sparse"),
                        help="run folder (features, models, evals)")
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="the dense model to sparsify")
    parser.add_argument("--methods", nargs="+", default=["bidst", "rigl", "magnitude"], choices=METHODS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9],
                        help="fractions of the masked weights set to zero, each in (0, 1)")
    parser.add_argument("--grid", nargs="+", default=None, metavar="METHOD-PERCENT",
                        help="explicit runs, e.g. bidst-90 rigl-90 (instead of --methods x --sparsities)")
    parser.add_argument("--steps", type=int, default=50, help="training steps of every method")
    parser.add_argument("--batch", type=int, default=4, help="scenes per step")
    parser.add_argument("--questions", type=int, default=16, help="question turns per scene and step")
    parser.add_argument("--spatial-turns", type=int, default=6,
                        help="turns of each scene given to spatial questions")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate")
    parser.add_argument("--train-scenes", type=int, default=1000,
                        help="training scenes whose features are cached")
    parser.add_argument("--val-scenes", type=int, default=50,
                        help="validation scenes (teacher-forced accuracy)")
    parser.add_argument("--distribution", default="erk", choices=DISTRIBUTIONS, help="per-layer budgets")
    parser.add_argument("--rho", type=float, default=0.05, help="S2-SAM radius of BiDST runs")
    parser.add_argument("--delta-t", type=int, default=10,
                        help="RigL update interval and BiDST projection interval")
    parser.add_argument("--rigl-alpha", type=float, default=0.3, help="RigL's initial update fraction")
    parser.add_argument("--gamma", type=float, default=0.01, help="BiDST's lower-level L2 coefficient")
    parser.add_argument("--score-lr", type=float, default=16.0,
                        help="BiDST's score learning rate (see the module docstring)")
    parser.add_argument("--hysteresis", type=float, default=0.0, help="BiDST's margin for active scores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-split", default="val", choices=("val", "test"),
                        help="split `tokencomp eval` scores")
    parser.add_argument("--eval-limit", type=int, default=1000, help="questions `tokencomp eval` scores")
    parser.add_argument("--budgets", nargs="+", type=int, default=[32, 64], help="ID-Pruner token budgets")
    parser.add_argument("--no-eval", action="store_true", help="train and save only")
    parser.add_argument("--report", type=Path, default=None, help="folder for report.md and the plot")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps on a few scenes, no eval (for tests)")


def _check(args: argparse.Namespace) -> None:
    positive = ("steps", "batch", "questions", "train_scenes", "val_scenes", "delta_t", "threads",
                "eval_limit")
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    bad = [s for s in args.sparsities if not 0.0 < s < 1.0]
    if bad:
        raise SystemExit(f"error: --sparsities must lie in (0, 1), got {bad}")
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"error: --model {args.model} is not a model folder (no config.json)")


def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(method, sparsity) of every run; `dense` once at sparsity 0."""
    if args.grid:
        runs = []
        for item in args.grid:
            method, _, percent = item.rpartition("-")
            if method not in METHODS or not percent.isdigit() or not 0 <= int(percent) < 100:
                raise SystemExit(f"error: --grid item {item!r} is not METHOD-PERCENT with METHOD one of "
                                 f"{', '.join(METHODS)} and PERCENT in 0..99")
            runs.append((method, 0.0 if method == "dense" else int(percent) / 100))
        return runs
    return [(m, s) for m in args.methods if m != "dense" for s in args.sparsities] + \
        [("dense", 0.0) for m in args.methods if m == "dense"]


def run_name(method: str, sparsity: float) -> str:
    return f"{method}-{round(100 * sparsity)}"


def masked_weights(model: LlavaForConditionalGeneration) -> dict[str, torch.nn.Parameter]:
    """The weights this recipe sparsifies, by llava-hf key: the decoder's and projector's linear layers."""
    return {llava_hf_key(name): weight for name, weight in linear_weights(model).items()}


class _GradientTap(Sparsifier):
    """A sparsifier that keeps each masked weight's dense gradient as it was just before masking (the gradient
    the step computed), for the mask updaters that read dense gradients."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dense_grads: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def mask_grads(self) -> None:
        self.dense_grads = {n: w.grad.clone() for n, w in self.weights.items() if w.grad is not None}
        super().mask_grads()

    @torch.no_grad()
    def restore_dense_grads(self) -> None:
        for name, weight in self.weights.items():
            weight.grad.copy_(self.dense_grads[name])


def _magnitude_masks(sparsifier: Sparsifier) -> None:
    for name, weight in sparsifier.weights.items():
        sparsifier.set_mask(name, top_k_mask(weight.detach().abs(), sparsifier.budgets[name]))


def _learning_rate(args: argparse.Namespace, step: int) -> float:
    warm = max(1, args.steps // 10)
    return args.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / args.steps))


def _batches(tokenizer, args: argparse.Namespace) -> list[tuple[np.ndarray, list]]:
    """(scene indices, qa_sequence rows) of every step, from --seed alone: all methods get the same ones."""
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(args.train_scenes)
                            for _ in range(math.ceil(args.steps * args.batch / args.train_scenes))])
    out = []
    for step in range(args.steps):
        idx = order[step * args.batch:(step + 1) * args.batch]
        rows = []
        for i in idx:
            questions = scenes.training_questions(scenes.make_scene("train", int(i)),
                                                  random.Random(int(rng.integers(2**31))), args.questions,
                                                  args.spatial_turns)
            rows.append(qa_sequence(tokenizer, questions, scenes.GRID * scenes.GRID, rng))
        out.append((idx, rows))
    return out


def _loss_fn(model, tokenizer, feats: torch.Tensor, idx: np.ndarray, rows: list):
    ids, labels, mask, positions, _ = pad_batch(rows, tokenizer.pad_token_id)
    image_rows = feats[torch.as_tensor(idx)].flatten(0, 1).float()
    return lambda: lm_loss(model, ids, labels, mask, positions, image_rows)[0]


def _log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def train_one(method: str, sparsity: float, args: argparse.Namespace, train_feats: torch.Tensor,
              val_feats: torch.Tensor, batches: list) -> Path:
    """Sparsify and fine-tune one copy of --model; returns the saved folder (reused if it exists)."""
    path = args.out / run_name(method, sparsity)
    if (path / "README.md").is_file():
        return path
    torch.manual_seed(args.seed)
    model = LlavaForConditionalGeneration.from_pretrained(args.model).train()
    processor = AutoProcessor.from_pretrained(args.model)
    tokenizer = processor.tokenizer
    model.model.vision_tower.requires_grad_(False)
    params = [*model.model.multi_modal_projector.parameters(), *model.model.language_model.parameters(),
              *model.lm_head.parameters()]
    opt = adamw(params, args.lr)
    for group in opt.param_groups:
        group["weight_decay"] = args.gamma
    sparsifier, bidst, rigl = None, None, None
    if method != "dense":
        sparsifier = _GradientTap(masked_weights(model), 1.0 - sparsity, args.distribution)
        if method == "bidst":  # before the first apply: its latent copy holds the dense weights
            bidst = BiDSTUpdate(sparsifier, gamma=args.gamma, score_lr=args.score_lr, interval=args.delta_t,
                                hysteresis=args.hysteresis)
        _magnitude_masks(sparsifier)
        sparsifier.apply(opt)
        if method == "rigl":
            rigl = RigLUpdate(args.steps, delta_t=args.delta_t, alpha=args.rigl_alpha)
    strategy = (S2SAMStep(params, opt, args.rho, sparsifier) if method == "bidst"
                else BaseStep(params, opt, sparsifier))
    config = SimpleNamespace(llm_batch=args.batch, device="cpu")
    before = validate(model, tokenizer, val_feats, config)
    start = time.time()
    bar = tqdm(batches, desc=run_name(method, sparsity))
    for step, (idx, rows) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _learning_rate(args, step)
        loss = strategy.step(_loss_fn(model, tokenizer, train_feats, idx, rows))
        if bidst is not None or (rigl is not None and rigl.due(step)):
            sparsifier.restore_dense_grads()
            if bidst is not None:
                bidst(step, opt)
            else:
                rigl(step, sparsifier, opt)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 25 == 0:
            _log(args.out, {"run": run_name(method, sparsity), "step": step + 1,
                            "loss": round(loss.item(), 4)})
    seconds = time.time() - start
    after = validate(model, tokenizer, val_feats, config)
    save_llava_hf(model.cpu().eval(), path, processor)
    record = {"run": run_name(method, sparsity), "method": method, "sparsity": sparsity, "steps": args.steps,
              "seconds": round(seconds), "val_before": before, "val_after": after,
              "turnover": bidst.turnover if bidst is not None else None}
    _log(args.out, record)
    (path / "README.md").write_text(model_card(path, record, args))
    return path


def tensor_zeros(path: Path) -> dict[str, tuple[list[int], int]]:
    """(shape, number of exact zeros) of every tensor in a saved checkpoint's model.safetensors."""
    state = load_file(path / "model.safetensors")
    return {k: (list(t.shape), int((t == 0).sum())) for k, t in sorted(state.items())}


def _command(args: argparse.Namespace) -> str:
    tail = sys.argv[3:] if sys.argv[1:3] == ["train", "sparse-llava"] else []
    return "tokencomp train sparse-llava " + shlex.join(tail)


def model_card(path: Path, record: dict, args: argparse.Namespace) -> str:
    """README.md of a saved sparse model: how it was made, and each tensor's zeros read back from the file."""
    zeros = tensor_zeros(path)
    masked = set(masked_weights(LlavaForConditionalGeneration.from_pretrained(path)))
    n_masked = sum(math.prod(zeros[k][0]) for k in masked)
    z_masked = sum(zeros[k][1] for k in masked)
    pct = lambda a, b: f"{100 * a / b:.2f}" if b else "—"
    val = lambda v: f"{100 * v['overall']:.1f} %"
    lines = [f"# {path.name}: tokencomp-tiny-llava, {LABELS[record['method']]}"
             + (f", {100 * record['sparsity']:.0f} % sparse" if record["sparsity"] else ""), "",
             f"Made by `training/recipes/sparse_llava.py` from `{args.model}`: `{_command(args)}`.", "",
             (f"- Method: {LABELS[record['method']]}; {record['steps']} steps of {args.batch} scenes x "
             f"{args.questions} questions on cached tower features (tower frozen), AdamW peak lr {args.lr}, "
             f"weight decay {args.gamma}, {record['seconds']} s on this machine."),
             (f"- Masked: the decoder's linear layers and the projector, {args.distribution} budgets; "
              "embeddings and LM head dense. Weights are stored dense; pruned ones are exact zeros."),
             f"- Masked weights: {n_masked}, zeros {z_masked} ({pct(z_masked, n_masked)} %).",
             (f"- Validation answer accuracy (teacher-forced, {args.val_scenes} val scenes, 576 tokens): "
             f"{val(record['val_before'])} right after pruning, {val(record['val_after'])} after training."),
             "", "Zeros of every tensor, read back from `model.safetensors` (masked ones in bold):", "",
             "| tensor | shape | zeros | sparsity % |", "|---|---|---:|---:|"]
    for key, (shape, z) in zeros.items():
        name = f"**{key}**" if key in masked else key
        lines.append(f"| {name} | {'x'.join(map(str, shape))} | {z} | {pct(z, math.prod(shape))} |")
    return "\n".join(lines) + "\n"


def _eval(path: Path, args: argparse.Namespace) -> dict:
    """`tokencomp eval` of one model (unpruned and ID-Pruner at --budgets); returns its synthetic details.
    Tables are first rebuilt from the logs alone (`--from-logs`, which fails unless this very model answered
    every question); only then is the engine started."""
    out = args.out / "eval" / path.name
    command = [sys.executable, "-m", "tokencomp.cli", "eval", "--model", str(path), "--split",
               args.eval_split, "--limit", str(args.eval_limit), "--methods", "id_pruner", "--budgets",
               *map(str, args.budgets), "--no-baselines", "--out", str(out)]
    if subprocess.run([*command, "--from-logs"], check=False, capture_output=True).returncode != 0:
        subprocess.run([*command, "--in-process"], check=True)
    task = "synthetic" if args.eval_split == "test" else "synthetic_val"
    return json.loads((out / "results.json").read_text())["details"][task]


def sharpness(path: Path, args: argparse.Namespace, val_feats: torch.Tensor) -> float:
    """Random-perturbation sharpness of the teacher-forced loss on the first 16 val scenes' questions, inside
    the model's own zero pattern (the pruned weights stay zero)."""
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    weights = masked_weights(model)
    masks = {w: w.detach() != 0 for w in weights.values()}
    params = [*model.model.multi_modal_projector.parameters(), *model.model.language_model.parameters(),
              *model.lm_head.parameters()]
    rng = np.random.default_rng(0)
    count = min(16, len(val_feats))
    rows = [qa_sequence(tokenizer, scenes.make_scene("val", i).questions, 576, rng)
            for i in range(count)]
    loss_fn = _loss_fn(model, tokenizer, val_feats, np.arange(count), rows)
    return perturbation_sharpness(loss_fn, params, SHARPNESS_RADIUS,
                                  generator=torch.Generator().manual_seed(0), masks=masks)


def _smoke(args: argparse.Namespace) -> None:
    args.steps, args.batch, args.questions, args.train_scenes, args.val_scenes = 4, 2, 4, 8, 4
    args.delta_t, args.no_eval = 2, True


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        _smoke(args)
    _check(args)
    runs = plan(args)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dense = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    train_feats = cache_features(dense, processor, "train", args.train_scenes, args.out)
    val_feats = cache_features(dense, processor, "val", args.val_scenes, args.out)
    batches = _batches(processor.tokenizer, args)
    paths = {run_name(m, s): train_one(m, s, args, train_feats, val_feats, batches) for m, s in runs}
    for name, path in paths.items():
        print(f"saved {path}")
    if args.no_eval:
        return 0
    results_path = args.out / f"results_{args.eval_split}_{args.eval_limit}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name, path in tqdm({"shipped": args.model, **paths}.items(), desc="eval"):
        if name not in results:
            results[name] = {"details": _eval(path, args), "sharpness": sharpness(path, args, val_feats)}
            results_path.write_text(json.dumps(results, indent=1))
    if args.report is not None:
        write_report(args.report, results, args)
    return 0



def _sample_log(folder: Path, setting: str) -> dict[str, dict]:
    """id -> record of one setting ("none", "id_pruner@32") from an eval folder's per-sample log; of several
    logs (a model retrained into the same folder), the newest."""
    logs = sorted(folder.glob(f"*/{setting}-*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"no {setting} log under {folder}")
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()]
    return {r["id"]: r for r in rows if r["status"] == "ok"}


def constant_scores(records: list[dict]) -> np.ndarray:
    """[N] 1 where a question's answer is its family's most common answer: the best-constant answerer, whose
    mean is the chance level of those questions."""
    by_family: dict[str, Counter] = {}
    for r in records:
        by_family.setdefault(r["group"], Counter())[r["answers"][0]] += 1
    mode = {family: counts.most_common(1)[0][0] for family, counts in by_family.items()}
    return np.array([float(r["answers"][0] == mode[r["group"]]) for r in records])


def retention(folder: Path, shipped: Path, budget: int) -> dict:
    """Retention (accuracy at `budget` / unpruned accuracy, the same model) with its cluster-bootstrap
    interval; its paired difference from the shipped model's retention on the same questions (the same scenes
    drawn for both); and retention above chance, (pruned − chance) / (unpruned − chance) with chance the
    best constant answer per family: a model near chance keeps its accuracy under any pruning, so plain
    retention flatters it."""
    logs = [_sample_log(f, s) for f in (folder, shipped) for s in ("none", f"id_pruner@{budget}")]
    ids = sorted(set.intersection(*(set(log) for log in logs)))
    none, pruned, ship_none, ship_pruned = (np.array([log[i]["score"] for i in ids]) for log in logs)
    clusters = [logs[0][i]["cluster"] for i in ids]
    chance = constant_scores([logs[0][i] for i in ids])
    ratio = lambda a, b, idx: float(a[idx].mean() / b[idx].mean())
    above = lambda a, b, idx: float((a[idx].mean() - chance[idx].mean())
                                    / (b[idx].mean() - chance[idx].mean()))
    stats = {"retention": lambda idx: ratio(pruned, none, idx),
             "vs_shipped": lambda idx: ratio(pruned, none, idx) - ratio(ship_pruned, ship_none, idx),
             "above_chance": lambda idx: above(pruned, none, idx),
             "above_vs_shipped": lambda idx: above(pruned, none, idx) - above(ship_pruned, ship_none, idx)}
    out = {}
    for name, statistic in stats.items():
        value, _ = statistic_interval(statistic, clusters)
        out[name] = [value.estimate, value.low, value.high]
    return {**out, "chance": float(chance.mean()), "questions": len(ids)}


def _summary(args: argparse.Namespace, results: dict) -> list[dict]:
    """One row per scored model: method, sparsity, accuracies, retentions, sharpness, training record."""
    trained = {}
    if (args.out / "log.jsonl").is_file():
        for line in (args.out / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "val_after" in record:
                trained[record["run"]] = record
    shipped = args.out / "eval" / args.model.name
    rows = []
    for name, value in results.items():
        method, sparsity = ("shipped", 0.0) if name == "shipped" else (name.rpartition("-")[0],
                                                                      int(name.rpartition("-")[2]) / 100)
        folder = shipped if name == "shipped" else args.out / "eval" / name
        details = value["details"]
        row = {"name": name, "method": method, "sparsity": sparsity, "sharpness": value["sharpness"],
               "none": details["none"], "train": trained.get(name)}
        for k in args.budgets:
            row[k] = {"pruned": details[f"id_pruner@{k}"], **retention(folder, shipped, k)}
        rows.append(row)
    order = ["shipped", *METHODS]
    return sorted(rows, key=lambda r: (order.index(r["method"]), r["sparsity"]))


def _above_chance(r: dict, k: int) -> list[float] | None:
    """Retention above chance at budget k, or None for a model whose unpruned accuracy is not above chance
    (the ratio's denominator is then zero or negative: no signal left to retain)."""
    return r[k]["above_chance"] if r["none"]["score"] > r[k]["chance"] else None


def _errorbar(ax, x: list[float], values: list[list[float]], style: dict) -> None:
    """values: [estimate, low, high] fractions per point, drawn in %."""
    y = [100 * v[0] for v in values]
    err = [[100 * (v[0] - v[1]) for v in values], [100 * (v[2] - v[0]) for v in values]]
    ax.errorbar(x, y, yerr=err, capsize=3, **style)


def _plot(path: Path, rows: list[dict], budgets: list[int]) -> None:
    """Accuracy, retention and retention above chance against sparsity, and retention against sharpness."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = 1 + len(budgets)
    fig, axes = plt.subplots(2, columns, figsize=(5 * columns, 9), squeeze=False)
    markers = {"bidst": ("o", "C0"), "rigl": ("s", "C1"), "magnitude": ("^", "C2"), "dense": ("D", "C4"),
               "shipped": ("*", "C3")}
    sparsity = "sparsity of the masked weights (%)"
    for method, (marker, colour) in markers.items():
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        if not mine:
            continue
        x = [100 * r["sparsity"] for r in mine]
        style = {"marker": marker, "color": colour, "label": LABELS[method]}
        _errorbar(axes[0, 0], x, [[r["none"]["score"], *r["none"]["ci95"]] for r in mine], style)
        alive = [r for r in mine if _above_chance(r, budgets[0]) is not None]
        axes[1, 0].scatter([r["sharpness"] for r in alive],
                           [100 * r[budgets[0]]["above_chance"][0] for r in alive], **style)
        for column, k in enumerate(budgets, start=1):
            _errorbar(axes[0, column], x, [r[k]["retention"] for r in mine], style)
            above = [(xi, _above_chance(r, k)) for xi, r in zip(x, mine) if _above_chance(r, k) is not None]
            if above:
                _errorbar(axes[1, column], [a[0] for a in above], [a[1] for a in above], style)
    axes[0, 0].set(xlabel=sparsity, ylabel="accuracy, 576 tokens (%)", title="unpruned accuracy (95 % CI)")
    axes[1, 0].set(xlabel=f"random-perturbation sharpness (radius {SHARPNESS_RADIUS})",
                   ylabel=f"retention above chance at K = {budgets[0]} (%)",
                   title="retention above chance vs sharpness")
    for column, k in enumerate(budgets, start=1):
        axes[0, column].set(xlabel=sparsity, ylabel=f"retention at K = {k} (%)",
                            title=f"ID-Pruner K = {k}: accuracy / unpruned")
        axes[1, column].set(xlabel=sparsity, ylabel=f"retention above chance at K = {k} (%)",
                            title=f"K = {k}: (acc. − chance) / (unpruned − chance)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rank_correlation(x: list[float], y: list[float]) -> float:
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)
    return float(np.corrcoef(rank(x), rank(y))[0, 1]) if len(x) > 2 else float("nan")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _interval(v: list[float]) -> str:
    return f"{_pct(v[0])} [{_pct(v[1])}, {_pct(v[2])}]"


def _paired(r: dict, difference: list[float]) -> str:
    """A paired difference [estimate, low, high] in points, bold where its interval excludes 0."""
    estimate, low, high = difference
    text = f"{100 * estimate:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"**{text}**" if r["method"] != "shipped" and (low > 0 or high < 0) else text


def _table(rows: list[dict], budgets: list[int]) -> list[str]:
    head = ["model", "sparsity %", "val acc. after pruning -> after training", "train s",
            "accuracy 576 tokens"]
    head += [f"{what} {k}" for k in budgets
             for what in ("K =", "retention", "vs shipped", "above chance", "vs shipped")] + ["sharpness"]
    lines = ["| " + " | ".join(head) + " |",
             "|---|---:|---|---:|---|" + "---|---|---|---|---|" * len(budgets) + "---:|"]
    for r in rows:
        train = r["train"]
        val = "—"
        if train:
            val = f"{_pct(train['val_before']['overall'])} -> {_pct(train['val_after']['overall'])}"
        cells = [LABELS[r["method"]], _pct(r["sparsity"]), val, str(train["seconds"]) if train else "—",
                 _interval([r["none"]["score"], *r["none"]["ci95"]])]
        for k in budgets:
            above = _above_chance(r, k)
            cells += [_interval([r[k]["pruned"]["score"], *r[k]["pruned"]["ci95"]]),
                      _interval(r[k]["retention"]), _paired(r, r[k]["vs_shipped"]),
                      _interval(above) if above else "— (unpruned not above chance)",
                      _paired(r, r[k]["above_vs_shipped"]) if above else "—"]
        lines.append("| " + " | ".join([*cells, f"{r['sharpness']:.4f}"]) + " |")
    return lines


def _families(rows: list[dict], budget: int) -> list[str]:
    families = list(rows[0]["none"]["groups"])
    lines = ["| model | sparsity % | " + " | ".join(families) + " |", "|---|---:|" + "---|" * len(families)]
    for r in rows:
        cells = [f"{_pct(r['none']['groups'][f])} / {_pct(r[budget]['pruned']['groups'][f])}"
                 for f in families]
        lines.append(f"| {LABELS[r['method']]} | {_pct(r['sparsity'])} | " + " | ".join(cells) + " |")
    return lines


def _answers(rows: list[dict], budgets: list[int]) -> list[str]:
    """The question, answered from the table: over the sparse models still above chance, rank correlations
    of retention above chance with sparsity and with sharpness, and the models whose retention above chance
    differs from the shipped model's beyond the paired interval."""
    lines = []
    for k in budgets:
        alive = [r for r in rows if _above_chance(r, k) is not None]
        sparse = [r for r in alive if r["method"] not in ("shipped", "dense")]
        dead = [r["name"] for r in rows if _above_chance(r, k) is None]
        kept = lambda group: [r[k]["above_chance"][0] for r in group]  # noqa: B023 - used in this iteration
        by_sparsity = _rank_correlation([r["sparsity"] for r in sparse], kept(sparse))
        by_sharpness = _rank_correlation([r["sharpness"] for r in alive], kept(alive))
        better = ", ".join(r["name"] for r in sparse if r[k]["above_vs_shipped"][1] > 0) or "none"
        worse = ", ".join(r["name"] for r in sparse if r[k]["above_vs_shipped"][2] < 0) or "none"
        lines.append(f"- K = {k}: left out, unpruned accuracy not above chance: {', '.join(dead) or 'none'}. "
                     f"Rank correlation of retention above chance with sparsity {by_sparsity:+.2f} "
                     f"({len(sparse)} sparse models), with sharpness {by_sharpness:+.2f} "
                     f"({len(alive)} models); above the shipped model's beyond the paired interval: "
                     f"{better}; below it: {worse}.")
    return lines


def write_report(folder: Path, results: dict, args: argparse.Namespace) -> None:
    """report.md and sparse_llava.png from the scored models."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = _summary(args, results)
    _plot(folder / "sparse_llava.png", rows, args.budgets)
    budgets = " ".join(map(str, args.budgets))
    setup = (f"{args.steps} steps of {args.batch} scenes x {args.questions} questions per model on cached "
             f"tower features ({args.train_scenes} training scenes), AdamW peak lr {args.lr}, "
             f"{args.distribution} per-layer budgets over the decoder's linear layers and the projector "
             "(embeddings and LM head dense); every method starts from the same magnitude mask and sees the "
             "same batches. Each model is scored by `tokencomp eval --model PATH --in-process --split "
             f"{args.eval_split} --limit {args.eval_limit} --methods id_pruner --budgets {budgets} "
             "--no-baselines` (greedy, exact match).")
    legend = ("Retention = accuracy with ID-Pruner at K tokens / unpruned accuracy of the same model, with "
              "its 95 % cluster-bootstrap interval (scenes resampled); \"vs shipped\" is the paired "
              "difference from the shipped model's retention on the same questions (bold where its interval "
              "excludes 0); \"above chance\" = (accuracy at K − chance) / (unpruned accuracy − chance), "
              "with its paired difference from the shipped model's, chance being the best constant answer "
              "per family on these questions (overall "
              f"{_pct(rows[0][args.budgets[0]]['chance'])} %); plain retention flatters a model near chance. "
              "Sharpness: mean increase of the teacher-forced validation loss under filter-normalised "
              f"Gaussian perturbations of radius {SHARPNESS_RADIUS} inside each model's own zero pattern "
              "(10 directions, 16 val scenes).")
    lines = ["# Sparse tiny LLaVA under token pruning", "", f"Command: `{_command(args)}`", "", setup, "",
             legend, "", *_table(rows, args.budgets), "",
             f"Per family, unpruned / K = {args.budgets[0]} accuracy (%):", "",
             *_families(rows, args.budgets[0]),
             "", "## Do sparser or flatter models tolerate token pruning better?", "",
             *_answers(rows, args.budgets), "", "![accuracy and retention vs sparsity](sparse_llava.png)", ""]
    (folder / "report.md").write_text("\n".join(lines))
    print(f"wrote {folder / 'report.md'}")
