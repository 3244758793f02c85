"""Recipe: OPTIMA module-wise bandit distillation of a 2-block student from the shipped model, against baselines.

OPTIMA (Liang et al., NeurIPS 2023) against four baselines at equal teacher-forward budget:

    nice -n 10 tokencomp train optima --out training/reports/optima [--seeds 3] [--steps 300] [--smoke]

Teacher: `models/tokencomp-tiny-llava` (4 LLM blocks). Student: the same architecture with `--student-layers`
blocks (default 2), started from the teacher's weights (training/distill.py: block j from teacher block
layer_map[j], first and last kept), sharing its frozen vision tower — so every run trains on cached tower features. The tower is not
an arm: a smaller tower would make the student re-learn the dense labels the shipped tower was pre-trained on.

Every method trains projector + LLM + head for `--steps` steps on the same batches (per seed), each step one
teacher forward (none for `task`): the equal teacher-forward budget. The loss is the answer cross-entropy, plus
for every method but `task` the output-logit KD term (KL, weight `--kd-weight`), plus `--beta` times the layer-wise
loss of the distilled modules:

- `task`: cross-entropy alone;  `kd`: + logit KD, no layer-wise term;
- `all`: every module every step;  `random`: one arm per episode, uniformly;
- `optima`: one arm per episode of `--episode` steps, chosen by sliding-window Thompson sampling
  (training/bandit.py, window `--window` of the arm's own rewards). Reward = relative decrement of the
  distillation loss (every module's layer loss + logit KD) on a fixed held-out batch of training-split scenes
  outside the training pool, before and after the episode: (L_before − L_after) / L_before.

Arms (`--arms`): `single` — each module alone (projector, llm.0, llm.1); `subsets` — every non-empty subset.
Where the paper leaves a constant open (episode length, window, prior, loss weights) ours are flags. Accuracy is
greedy-equivalent teacher-forced exact match (every answer token and the end token right) per question family,
on val scenes (for choosing) and on the first `--test-scenes` test scenes (reported once per configuration). The
student of the best method on val is saved in the hub layout to WORK/student, served by `tokencomp serve`.
Writes results.json, report.md and PNGs to --out; caches and students go to --work (resumable per run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training import distill, scenes
from tokencomp.training.bandit import SlidingWindowThompson
from tokencomp.training.llava_hf import save_llava_hf
from tokencomp.training.llava_parts import tower_features
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence

METHODS = ("task", "kd", "all", "random", "optima")


@dataclass
class Config:
    out: str = "training/reports/optima"
    work: str = "runs/optima"
    teacher: str = "models/tokencomp-tiny-llava"
    student_layers: int = 2
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    steps: int = 150
    batch: int = 4
    questions: int = 8  # turns per training sequence (one scene, whole image)
    episode: int = 5
    window: int = 4
    prior_std: float = 1.0
    arms: str = "single"
    beta: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 1.0
    lr: float = 1e-3
    train_scenes: int = 600
    heldout_scenes: int = 8
    val_scenes: int = 60
    test_scenes: int = 160
    threads: int = 2

    @classmethod
    def smoke(cls, out: str, work: str) -> Config:
        return cls(out=out, work=work, seeds=1, steps=2, batch=1, questions=2, episode=1, train_scenes=2,
                   heldout_scenes=1, val_scenes=1, test_scenes=1)


_NUMBERS = ("student_layers", "seeds", "steps", "batch", "questions", "episode", "window", "prior_std", "beta",
            "kd_weight", "temperature", "lr", "train_scenes", "heldout_scenes", "val_scenes", "test_scenes", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    parser.add_argument("--out", default=defaults.out, help="folder for results.json, report.md and plots")
    parser.add_argument("--work", default=defaults.work, help="folder for feature caches, per-run results, students")
    parser.add_argument("--teacher", default=defaults.teacher, help="teacher checkpoint (hub layout)")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds, for tests")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument("--arms", choices=("single", "subsets"), default=None)
    for name in _NUMBERS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)), default=None)


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config.smoke(args.out, args.work) if args.smoke else Config(out=args.out, work=args.work)
    for name in (*_NUMBERS, "teacher", "arms"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.methods:
        config.methods = tuple(args.methods)
    for name in _NUMBERS:
        if name not in ("beta", "kd_weight") and not getattr(config, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    if config.beta < 0 or config.kd_weight < 0:
        raise ValueError(f"--beta and --kd-weight must be >= 0, got {config.beta} and {config.kd_weight}")
    if not (Path(config.teacher) / "config.json").exists():
        raise ValueError(f"--teacher {config.teacher!r} is not a checkpoint folder (no config.json)")
    return config


def arm_list(modules: list[str], kind: str) -> list[tuple[str, ...]]:
    """The bandit's arms: each module alone, or every non-empty subset of the modules."""
    if kind == "single":
        return [(m,) for m in modules]
    return [c for size in range(1, len(modules) + 1) for c in itertools.combinations(modules, size)]


@torch.no_grad()
def cache_features(teacher, processor, split: str, indices: range, path: Path) -> torch.Tensor:
    """The teacher tower's patch features [len(indices), 576, Dv] (float16) of the given scenes, cached on disk."""
    if path.exists():
        return torch.load(path)
    feats = []
    for start in tqdm(range(0, len(indices), 32), desc=f"cache {split}"):
        chunk = indices[start:start + 32]
        images = [scenes.render(scenes.make_scene(split, i)) for i in chunk]
        pixels = processor.image_processor(images, return_tensors="pt").pixel_values
        feats.append(tower_features(teacher, pixels).half())
    feats = torch.cat(feats)
    torch.save(feats, path)
    return feats


def _batch(tokenizer, split: str, indices, questions_for) -> tuple[torch.Tensor, ...]:
    """(ids, labels, mask, positions, owners) of one sequence per scene over its whole image."""
    rng = np.random.default_rng(0)
    rows = [qa_sequence(tokenizer, questions_for(i), scenes.GRID * scenes.GRID, rng) for i in indices]
    return pad_batch(rows, tokenizer.pad_token_id)


def training_batches(tokenizer, config: Config, seed: int):
    """`config.steps` batches (scene rows into the train cache, ids, labels, mask, positions): the same for every
    method of a seed, so methods are compared on the same data."""
    rng = np.random.default_rng(seed)
    for _ in range(config.steps):
        idx = rng.choice(config.train_scenes, config.batch, replace=False)
        draws = {int(i): random.Random(int(rng.integers(2**31))) for i in idx}
        ids, labels, mask, positions, _ = _batch(
            tokenizer, "train", [int(i) for i in idx],
            lambda i, draws=draws: scenes.training_questions(scenes.make_scene("train", i), draws[i], config.questions))
        yield idx, ids, labels, mask, positions


@torch.no_grad()
def accuracy(model, tokenizer, split: str, feats: torch.Tensor, batch: int = 4) -> dict[str, float]:
    """Teacher-forced exact match per family and overall on every question of the first len(feats) scenes of
    `split`: right when every answer token and the end token are the argmax, i.e. when greedy decoding gives
    exactly the answer (each question sees only the image and itself, as if asked alone)."""
    right: dict[str, list[bool]] = {}
    for start in range(0, len(feats), batch):
        chunk = range(start, min(len(feats), start + batch))
        ids, labels, mask, positions, owners = _batch(tokenizer, split, chunk,
                                                      lambda i: scenes.make_scene(split, i).questions)
        out = distill.forward(model, ids, mask, positions, feats[start:chunk.stop].flatten(0, 1).float())
        ok = out.logits[:, :-1].argmax(-1) == labels[:, 1:]
        owners = owners[:, 1:]
        for row, i in enumerate(chunk):
            for q, question in enumerate(scenes.make_scene(split, i).questions):
                right.setdefault(question["family"], []).append(bool(ok[row][owners[row] == q].all()))
    scores = {family: float(np.mean(v)) for family, v in sorted(right.items())}
    return {"overall": float(np.mean([x for v in right.values() for x in v])), **scores,
            "questions": sum(len(v) for v in right.values())}


class HeldOut:
    """The fixed held-out batch the reward is measured on, with the teacher's outputs computed once."""

    def __init__(self, teacher, tokenizer, feats: torch.Tensor, first_scene: int, config: Config) -> None:
        indices = range(first_scene, first_scene + len(feats))
        rng = random.Random(0)
        self.ids, self.labels, self.mask, self.positions, _ = _batch(
            tokenizer, "train", indices, lambda i: scenes.training_questions(scenes.make_scene("train", i), rng,
                                                                            config.questions))
        self.feats, self.config = feats.flatten(0, 1).float(), config
        with torch.no_grad():
            self.teacher = distill.forward(teacher, self.ids, self.mask, self.positions, self.feats)
        self.valid = self.ids != tokenizer.pad_token_id

    @torch.no_grad()
    def losses(self, student, layer_map: list[int]) -> dict[str, float]:
        """Every module's layer loss, the logit KD and their sum ("distill") on the held-out batch."""
        out = distill.forward(student, self.ids, self.mask, self.positions, self.feats)
        losses = {k: float(v) for k, v in distill.module_losses(out, self.teacher, layer_map, self.valid).items()}
        losses["kd"] = float(distill.logit_kd(out.logits, self.teacher.logits, self.labels, self.config.temperature))
        losses["distill"] = sum(losses.values())
        losses["task"] = float(distill.task_loss(out.logits, self.labels))
        return losses


def train_student(method: str, seed: int, teacher, tokenizer, train_feats: torch.Tensor, heldout: HeldOut,
                  config: Config) -> tuple[LlavaForConditionalGeneration, dict]:
    """One student trained by `method`; returns it and its log (held-out losses per episode, arms pulled)."""
    torch.manual_seed(seed)
    student = distill.build_student(teacher, config.student_layers)
    student.model.vision_tower.requires_grad_(False)
    layer_map = distill.uniform_layer_map(config.student_layers, teacher.config.text_config.num_hidden_layers)
    arms = arm_list(distill.module_names(config.student_layers), config.arms)
    bandit = SlidingWindowThompson(len(arms), config.window, prior_std=config.prior_std, seed=seed)
    choose = random.Random(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))
    log = {"heldout": [{"step": 0, **heldout.losses(student, layer_map)}], "arms": [], "rewards": []}
    arm, teacher_forwards, start = None, 0, time.time()
    bar = tqdm(training_batches(tokenizer, config, seed), total=config.steps, desc=f"{method} seed {seed}",
               leave=False)
    for step, (idx, ids, labels, mask, positions) in enumerate(bar):
        if step % config.episode == 0 and method in ("random", "optima"):
            arm = bandit.select() if method == "optima" else choose.randrange(len(arms))
            log["arms"].append("+".join(arms[arm]))
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        feats = train_feats[torch.from_numpy(idx)].flatten(0, 1).float()
        out = distill.forward(student, ids, mask, positions, feats)
        loss = distill.task_loss(out.logits, labels)
        if method != "task":
            with torch.no_grad():
                target = distill.forward(teacher, ids, mask, positions, feats)
            teacher_forwards += len(idx)
            loss = loss + config.kd_weight * distill.logit_kd(out.logits, target.logits, labels, config.temperature)
            layer = distill.module_losses(out, target, layer_map, ids != tokenizer.pad_token_id)
            distilled = list(layer) if method == "all" else arms[arm] if method in ("random", "optima") else ()
            loss = loss + config.beta * sum((layer[m] for m in distilled), loss.new_zeros(()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % config.episode == 0 or step + 1 == config.steps:
            losses = heldout.losses(student, layer_map)
            if method == "optima":
                before = log["heldout"][-1]["distill"]
                reward = (before - losses["distill"]) / before
                bandit.update(arm, reward)
                log["rewards"].append(reward)
            log["heldout"].append({"step": step + 1, **losses})
    log.update(seconds=round(time.time() - start, 1), teacher_forwards=teacher_forwards)
    return student, log


def _summary(runs: list[dict], split: str, key: str) -> tuple[float, float]:
    values = [r[split][key] for r in runs]
    return float(np.mean(values)), float(np.std(values))


def paired_by_seed(runs: list[dict], method: str, baseline: str, key: str = "overall") -> dict | None:
    """`method` minus `baseline` in test accuracy `key`, per seed both ran (same batches, same start), with the
    mean and its two-sided 95 % Student-t interval over seeds; None when fewer than two seeds have both."""
    from scipy import stats

    by = {(r["method"], r["seed"]): r["test"][key] for r in runs}
    seeds = sorted(s for m, s in by if m == method and (baseline, s) in by)
    if len(seeds) < 2:
        return None
    diffs = np.array([by[method, s] - by[baseline, s] for s in seeds])
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return {"seeds": seeds, "diffs": diffs.tolist(), "mean": float(diffs.mean()),
            "interval": (float(diffs.mean() - half), float(diffs.mean() + half))}


def write_report(results: dict, config: Config, out: Path, command: str) -> None:
    """report.md and the plots from results.json's content."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in scenes.FAMILIES if f in results["teacher"]["test"]]
    by_method = {m: [r for r in results["runs"] if r["method"] == m] for m in config.methods}
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    width = 0.8 / (len(by_method) + 1)
    x = np.arange(len(families) + 1)
    for i, (label, runs) in enumerate([("teacher", [results["teacher"]]), *by_method.items()]):
        stats = [_summary(runs, "test", k) for k in ("overall", *families)]
        axes[0].bar(x + i * width, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats], label=label)
    axes[0].set_xticks(x + width * len(by_method) / 2, ["overall", *families])
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{config.student_layers}-block students, mean ± std over {config.seeds} seeds")
    for method, runs in by_method.items():
        curve = np.mean([[h["distill"] for h in r["log"]["heldout"]] for r in runs], axis=0)
        steps = [h["step"] for h in runs[0]["log"]["heldout"]]
        axes[1].plot(steps, curve, label=method)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("held-out distillation loss")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    for seed, run in enumerate(by_method.get("optima", [])):
        names = sorted(set(run["log"]["arms"]) | {"+".join(a) for a in results["arms"]})
        axes[2].scatter(range(len(run["log"]["arms"])), [names.index(a) + 0.15 * seed for a in run["log"]["arms"]],
                        s=12, label=f"seed {seed}")
        axes[2].set_yticks(range(len(names)), names)
    axes[2].set_xlabel("episode")
    axes[2].set_title("OPTIMA's arm per episode")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "optima.png", dpi=110)
    plt.close(fig)

    header = "| model | val overall | test overall | " + " | ".join(families) + " | teacher forwards | minutes |"
    lines = [header, "|---" + "|---:" * (len(families) + 4) + "|"]
    teacher = results["teacher"]
    lines.append(f"| teacher (4 blocks) | {100 * teacher['val']['overall']:.1f} | {100 * teacher['test']['overall']:.1f} | "
                 + " | ".join(f"{100 * teacher['test'][f]:.1f}" for f in families) + " | | |")
    init = results["untrained_student"]
    lines.append(f"| student, untrained copy | {100 * init['val']['overall']:.1f} | {100 * init['test']['overall']:.1f} | "
                 + " | ".join(f"{100 * init['test'][f]:.1f}" for f in families) + " | 0 | 0 |")
    for method, runs in by_method.items():
        cells = [_summary(runs, split, k) for split, k in (("val", "overall"), ("test", "overall"),
                                                           *(("test", f) for f in families))]
        lines.append(f"| {method} | " + " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in cells)
                     + f" | {runs[0]['log']['teacher_forwards']} | {np.mean([r['log']['seconds'] for r in runs]) / 60:.1f} |")
    picks = {}
    for run in by_method.get("optima", []):
        for a in run["log"]["arms"]:
            picks[a] = picks.get(a, 0) + 1
    n_test, n_val = teacher["test"]["questions"], teacher["val"]["questions"]
    paired = ["| OPTIMA minus | per seed (points) | mean | 95 % t-interval over seeds | interval excludes 0 |",
              "|---|---|---:|---|---|"]
    for baseline in (m for m in config.methods if m != "optima"):
        p = paired_by_seed(results["runs"], "optima", baseline)
        if p:
            lo, hi = p["interval"]
            paired.append(f"| {baseline} | " + ", ".join(f"{100 * d:+.1f}" for d in p["diffs"])
                          + f" | {100 * p['mean']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {lo > 0 or hi < 0} |")
    text = [
        "# OPTIMA: module-wise bandit distillation of a 2-block student",
        "",
        f"Command: `{command}`",
        "",
        (f"Teacher `{config.teacher}`; student: {config.student_layers} LLM blocks (teacher blocks "
        f"{results['layer_map']} copied in), the teacher's frozen tower. {config.steps} steps of {config.batch} "
        f"scenes ({config.questions} questions each) per run, episodes of {config.episode} steps, window "
        f"{config.window}, arms `{config.arms}`, beta {config.beta}, KD weight {config.kd_weight}, lr {config.lr}, "
        f"{config.seeds} seeds (mean ± std). Val: {n_val} questions ({config.val_scenes} scenes); test: {n_test} "
        f"questions (the first {config.test_scenes} test scenes). Accuracy: teacher-forced exact match "
        "(= greedy exact match)."),
        "",
        *lines,
        "",
        ("Paired by seed (each seed's methods train on the same batches from the same start), test overall "
         "accuracy:"),
        "",
        *(paired if len(paired) > 2 else ["(fewer than two seeds with both methods)"]),
        "",
        f"OPTIMA's arms over all seeds' episodes: {json.dumps(picks)}.",
        "",
        (f"Best on val: **{results['best']['method']}** (seed {results['best']['seed']}), saved to "
        f"`{results['best']['path']}`."),
        "",
        "![test accuracy per family, held-out distillation loss, OPTIMA's arms](optima.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))


def run_recipe(config: Config, command: str) -> dict:
    torch.set_num_threads(config.threads)
    out, work = Path(config.out), Path(config.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    teacher = LlavaForConditionalGeneration.from_pretrained(config.teacher).eval()
    teacher.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(config.teacher)
    tokenizer = processor.tokenizer
    n_train, n_held = config.train_scenes, config.heldout_scenes
    train_feats = cache_features(teacher, processor, "train", range(n_train), work / f"train_{n_train}.pt")
    held_feats = cache_features(teacher, processor, "train", range(n_train, n_train + n_held),
                                work / f"heldout_{n_train}_{n_held}.pt")
    val_feats = cache_features(teacher, processor, "val", range(config.val_scenes), work / f"val_{config.val_scenes}.pt")
    test_feats = cache_features(teacher, processor, "test", range(config.test_scenes),
                                work / f"test_{config.test_scenes}.pt")
    heldout = HeldOut(teacher, tokenizer, held_feats, n_train, config)
    layer_map = distill.uniform_layer_map(config.student_layers, teacher.config.text_config.num_hidden_layers)

    def scores(model) -> dict:
        return {"val": accuracy(model, tokenizer, "val", val_feats), "test": accuracy(model, tokenizer, "test", test_feats)}

    # the teacher's and the untrained student's scores depend only on these: kept in work, not recomputed
    reference_key = {k: getattr(config, k) for k in ("teacher", "student_layers", "val_scenes", "test_scenes")}
    reference_path = work / "reference_scores.json"
    reference = json.loads(reference_path.read_text()) if reference_path.exists() else {}
    if reference.get("key") != reference_key:
        reference = {"key": reference_key, "teacher": scores(teacher),
                     "untrained_student": scores(distill.build_student(teacher, config.student_layers))}
        reference_path.write_text(json.dumps(reference))
    results = {"config": asdict(config), "layer_map": layer_map, "teacher": reference["teacher"],
               "untrained_student": reference["untrained_student"],
               "arms": arm_list(distill.module_names(config.student_layers), config.arms), "runs": []}
    done_path = work / "runs.jsonl"
    done = [json.loads(line) for line in done_path.open()] if done_path.exists() else []
    key = {k: v for k, v in asdict(config).items() if k not in ("out", "work", "seeds", "methods", "threads")}
    # seed by seed, so that an interrupted run leaves every method with as many seeds as possible
    for seed in range(config.seeds):
        for method in config.methods:
            found = [r for r in done if r["method"] == method and r["seed"] == seed and r["key"] == key]
            if found:
                results["runs"].append(found[-1])
                continue
            student, log = train_student(method, seed, teacher, tokenizer, train_feats, heldout, config)
            run = {"method": method, "seed": seed, "key": key, **scores(student), "log": log}
            torch.save(student.state_dict(), work / f"student_{method}_{seed}.pt")
            with done_path.open("a") as f:
                f.write(json.dumps(run) + "\n")
            results["runs"].append(run)
            print(json.dumps({"method": method, "seed": seed, "val": run["val"]["overall"],
                              "test": run["test"]["overall"], "seconds": log["seconds"]}), flush=True)
    means = {m: np.mean([r["val"]["overall"] for r in results["runs"] if r["method"] == m]) for m in config.methods}
    best_method = max(means, key=means.get)
    best = max((r for r in results["runs"] if r["method"] == best_method), key=lambda r: r["val"]["overall"])
    student = distill.build_student(teacher, config.student_layers)
    student.load_state_dict(torch.load(work / f"student_{best_method}_{best['seed']}.pt"))
    path = save_llava_hf(student.eval(), work / "student", processor)
    results["best"] = {"method": best_method, "seed": best["seed"], "path": str(path)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, config, out, command)
    return results


def main(args: argparse.Namespace) -> int:
    command = "tokencomp train optima " + shlex.join(sys.argv[3:] if sys.argv[1:2] == ["train"] else [])
    run_recipe(config_from_args(args), command)
    return 0
