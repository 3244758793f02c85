"""Recipe: continual adaptation of the shipped tiny LLaVA to two new question families with dual-teacher graph
proximity distillation (Zheng et al., ECCV 2024), against plain fine-tuning and its ablations.

    tokencomp train dual-teacher --out training/reports/dual_teacher [--work runs/dual-teacher] [--seeds 2]
        [--smoke]

Tasks (`dual_teacher_tasks.py`): first `size_name` ("What size is the red circle?"), then `side` ("Which side is
the red circle on?"), each trained on its own labelled questions over cached tower features, with six colour-shape
combinations never named in any training prompt. Every variant starts from the shipped model and trains the
projector and the whole LLM (the tower is frozen: its features are cached) on the same batches:

- `finetune`: answer loss only;
- `kd-t0`: + lambda x graph proximity loss to T0 (the shipped model), every sample;
- `dual-equal`: + both teachers, T0 and T1 (the model after the previous task; T1 = T0 on the first task),
  weight 1/2 each;
- `dual-reweight` (the method): both teachers, per-sample weights from the teachers' confidence
  (`training/dual_teacher.py`).

Distillation inputs: each scene's sequence carries its labelled task turns and `--ref-turns` unlabelled reference
prompts of the families learnt before (old families, earlier tasks; answers never trained). The paper distils on
CLIP image and text embeddings; this model has no separate text encoder, so a turn's image embedding is the mean
of the LLM's last (normed) hidden state over its scene's image tokens and its text embedding the last hidden state
where its answer starts (the state the answer is read from). Graphs (`training/graph_distill.py`) span every turn
of the batch. Accuracy is teacher-forced exact answers (an answer counts when every token and the end token are
predicted: exactly when greedy decoding gives it) on `--val-scenes` validation scenes, per old family and per new
task, the latter split into seen and held-out combinations; forgetting = the shipped model's accuracy minus the
final one. The first seed's `dual-reweight` model is saved in the hub layout (WORK/model) and the new tasks' test
questions in the eval layout (WORK/newtasks_test) for `tokencomp eval`. Writes results.json, report.md and
dual_teacher.png to --out; each (seed, variant) is kept in --work, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training import scenes
from tokencomp.training.dual_teacher import confidence, dual_teacher_loss, weights
from tokencomp.training.graph_distill import GRAPHS, proximity_loss
from tokencomp.training.llava_hf import save_llava_hf
from tokencomp.training.llava_loss import lm_loss
from tokencomp.training.optimizers import make_optimizer
from tokencomp.training.recipes.dual_teacher_tasks import (
    TASKS,
    eval_questions,
    kept_patches,
    make_batch,
    reference_turns,
    training_turns,
    write_task_split,
)
from tokencomp.training.recipes.moe_llava import cache_features

VARIANTS = {"finetune": None, "kd-t0": "t0", "dual-equal": "equal", "dual-reweight": "confidence"}
METHOD = "dual-reweight"


@dataclass
class Config:
    model: str = "models/tokencomp-tiny-llava"
    out: str = "training/reports/dual_teacher"
    work: str = "runs/dual-teacher"
    seeds: int = 2
    first_seed: int = 0
    variants: str = ",".join(VARIANTS)
    train_scenes: int = 1000
    val_scenes: int = 50
    steps: int = 40  # per task
    batch: int = 4
    turns: int = 6  # labelled task turns per scene
    ref_turns: int = 6  # unlabelled reference prompts per scene
    keep_background: float = 0.25
    lr: float = 2e-3
    lam: float = 1.0  # weight of the distillation loss
    tau: float = 0.1  # graph temperature
    weight_temperature: float = 1.0
    graphs: str = ",".join(GRAPHS)
    serve_scenes: int = 150
    threads: int = 2

    @classmethod
    def smoke(cls, **overrides) -> Config:
        return cls(**{"seeds": 1, "train_scenes": 8, "val_scenes": 4, "steps": 2, "batch": 2, "turns": 2,
                      "ref_turns": 2, "serve_scenes": 2, **overrides})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in fields(Config):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None)
    parser.add_argument("--smoke", action="store_true", help="a run of a minute or so on a few scenes, for tests")


def config_from_args(args: argparse.Namespace) -> Config:
    given = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    config = Config.smoke(**given) if args.smoke else Config(**given)
    for name in ("seeds", "train_scenes", "val_scenes", "steps", "batch", "turns", "lr", "tau",
                 "weight_temperature", "serve_scenes", "threads"):
        if not getattr(config, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    for name in ("first_seed", "ref_turns", "lam"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if not 0 <= config.keep_background <= 1:
        raise ValueError(f"--keep-background must be in [0, 1], got {config.keep_background}")
    if config.batch > config.train_scenes:
        raise ValueError(f"--batch ({config.batch}) must be at most --train-scenes ({config.train_scenes})")
    bad = [v for v in config.variants.split(",") if v not in VARIANTS]
    if bad or not config.variants:
        raise ValueError(f"--variants must be a comma list of {', '.join(VARIANTS)}; got {config.variants!r}")
    bad = [g for g in config.graphs.split(",") if g not in GRAPHS]
    if bad or not config.graphs:
        raise ValueError(f"--graphs must be a comma list of {', '.join(GRAPHS)}; got {config.graphs!r}")
    if not (Path(config.model) / "config.json").exists():
        raise ValueError(f"--model {config.model!r} is not a model folder (no config.json)")
    return config


def embed(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(answer loss, image embeddings [N, D], text embeddings [N, D], next-token logits where each answer starts
    [N, V]) of `model` on a `make_batch` batch of N turns (see the module docstring for the embeddings)."""
    loss, _, hidden = lm_loss(model, batch["ids"], batch["labels"], batch["mask"], batch["positions"],
                              batch["image"])
    last = hidden[-1]
    is_image = (batch["ids"] == model.config.image_token_index).to(last.dtype)
    per_scene = (last * is_image[..., None]).sum(1) / is_image.sum(1, keepdim=True)
    rows, cols = batch["ask"].T
    text = last[rows, cols]
    return loss, per_scene[batch["scene_row"]], text, model.lm_head(text)


def train_batches(tokenizer, feats: torch.Tensor, task_index: int, config: Config, seed: int):
    """`config.steps` batches of task TASKS[task_index] (the same for every variant of a seed)."""
    rng, pick = np.random.default_rng(seed * 1000 + task_index), random.Random(seed * 1000 + task_index)
    task, earlier = TASKS[task_index], TASKS[:task_index]
    pool = [i for i in range(len(feats)) if training_turns(task, scenes.make_scene("train", i), pick, 1)]
    for _ in range(config.steps):
        idx = [int(i) for i in rng.choice(pool, config.batch, replace=False)]
        chosen = [scenes.make_scene("train", i) for i in idx]
        yield make_batch(tokenizer, feats, idx, [training_turns(task, s, pick, config.turns) for s in chosen],
                         [reference_turns(earlier, s, pick, config.ref_turns) for s in chosen], rng,
                         [kept_patches(s, config.keep_background, rng) for s in chosen])


def train_task(student, teacher0, teacher1, mode: str | None, batches, config: Config, desc: str) -> dict:
    """AdamW on the student's projector and LLM over `batches`: answer loss + lam x the dual-teacher graph loss
    (mode None: answer loss only). Returns the last losses and the mean T0 weight on labelled and reference
    turns."""
    student.requires_grad_(False)
    for part in (student.model.multi_modal_projector, student.model.language_model, student.lm_head):
        part.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = make_optimizer("adamw", params, config.lr)
    graphs = tuple(config.graphs.split(","))
    w0_task, w0_ref, task_loss, distil = [], [], float("nan"), float("nan")
    student.train()
    for batch in tqdm(batches, total=config.steps, desc=desc):
        loss, s_image, s_text, _ = embed(student, batch)
        task_loss = loss.item()
        if mode is not None:
            with torch.no_grad():
                _, t0_image, t0_text, t0_logits = embed(teacher0, batch)
                if mode == "t0" or teacher1 is teacher0:
                    t1_image, t1_text, t1_logits = t0_image, t0_text, t0_logits
                else:
                    _, t1_image, t1_text, t1_logits = embed(teacher1, batch)
            loss0 = proximity_loss((t0_image, t0_text), (s_image, s_text), config.tau, graphs)
            loss1 = loss0 if t1_image is t0_image else proximity_loss((t1_image, t1_text), (s_image, s_text),
                                                                      config.tau, graphs)
            w = weights(confidence(t0_logits), confidence(t1_logits), mode, config.weight_temperature)
            kd = dual_teacher_loss(loss0, loss1, w)
            distil = kd.item()
            loss = loss + config.lam * kd
            trained = batch["trained"]
            w0_task.append(w[trained, 0].mean().item())
            if (~trained).any():
                w0_ref.append(w[~trained, 0].mean().item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    student.eval().requires_grad_(False)
    mean = (lambda v: float(np.mean(v)) if v else float("nan"))
    return {"task_loss": task_loss, "distil_loss": distil, "w0_task_turns": mean(w0_task),
            "w0_reference_turns": mean(w0_ref)}


@torch.no_grad()
def evaluate(model, tokenizer, feats: torch.Tensor, batch: int) -> dict[str, float]:
    """Teacher-forced exact-answer accuracy on the validation scenes: per old family, their mean ('old', each
    family alike), and per new task on seen ('<task>') and held-out ('<task>_held_out') combinations."""
    model.eval()
    right: dict[str, list[bool]] = {}
    rng = np.random.default_rng(0)
    for start in range(0, len(feats), batch):
        idx = list(range(start, min(len(feats), start + batch)))
        qs = [eval_questions("val", i) for i in idx]
        b = make_batch(tokenizer, feats, idx, qs, [[] for _ in idx], rng)
        _, ok, _ = lm_loss(model, b["ids"], b["labels"], b["mask"], b["positions"], b["image"])
        owners = b["owners"][:, 1:]
        for row, questions in enumerate(qs):
            for q, question in enumerate(questions):
                key = question["family"] + ("_held_out" if question.get("held_out") else "")
                right.setdefault(key, []).append(bool(ok[row][owners[row] == q].all()))
    scores = {f: float(np.mean(v)) for f, v in sorted(right.items())}
    scores["old"] = float(np.mean([scores[f] for f in scenes.FAMILIES if f in scores]))
    return scores


def run_variant(config: Config, seed: int, variant: str, shipped, tokenizer, train_feats, val_feats,
                first_task: dict) -> dict:
    """The task sequence for one variant: scores after each task, training statistics, and the final model.
    On the first task T1 = T0, so every distilling variant trains exactly alike there (equal weights of two
    equal losses, and confidence weights of two equal confidences, are 1/2 each): `first_task` keeps that
    stage (model and statistics) per seed, and the other distilling variants start from it."""
    torch.manual_seed(seed)
    mode, previous, stages = VARIANTS[variant], shipped, []
    for t, task in enumerate(TASKS):
        shared = (seed, mode is not None) if t == 0 else None
        if shared in first_task:
            student, stage = first_task[shared]
            student = copy.deepcopy(student)
        else:
            student = copy.deepcopy(previous)
            stats = train_task(student, shipped, previous, mode,
                               train_batches(tokenizer, train_feats, t, config, seed), config,
                               f"seed {seed} {variant} {task}")
            stage = {"task": task, **stats, "scores": evaluate(student, tokenizer, val_feats, config.batch)}
            if shared is not None:
                first_task[shared] = (copy.deepcopy(student), stage)
        stages.append(stage)
        previous = student
    return {"seed": seed, "variant": variant, "stages": stages, "model": previous}


def _mean_sd(values: list[float]) -> str:
    mean = 100 * float(np.mean(values))
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def summary(before: dict, runs: list[dict]) -> dict:
    """Per variant, over seeds: final scores, forgetting per old family (shipped minus final) and of the first
    task (after it minus final), and the scores after the first task."""
    out: dict = {}
    for run in runs:
        final, first = run["stages"][-1]["scores"], run["stages"][0]["scores"]
        row = {**{k: [v] for k, v in final.items()},
               **{f"forget_{f}": [before.get(f, np.nan) - final.get(f, np.nan)] for f in (*scenes.FAMILIES, "old")},
               f"forget_{TASKS[0]}": [first.get(TASKS[0], np.nan) - final.get(TASKS[0], np.nan)],
               **{f"after_{TASKS[0]}_{k}": [v] for k, v in first.items()}}
        target = out.setdefault(run["variant"], {})
        for k, v in row.items():
            target.setdefault(k, []).extend(v)
    return out


def plot(before: dict, runs: list[dict], variants: list[str], out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(before, runs)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    colours = dict(zip(VARIANTS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    width = 0.8 / len(variants)
    keys = [k for t in TASKS for k in (t, f"{t}_held_out")]
    for v, name in enumerate(variants):
        axes[0].bar(np.arange(len(keys)) + v * width, [100 * np.mean(table[name].get(k, np.nan)) for k in keys], width,
                    color=colours[name], label=name)
        axes[1].bar(np.arange(len(scenes.FAMILIES)) + v * width,
                    [100 * np.mean(table[name][f"forget_{f}"]) for f in scenes.FAMILIES], width, color=colours[name])
        trajectory = [before["old"]] + [float(np.mean([r["stages"][t]["scores"]["old"] for r in runs
                                                       if r["variant"] == name])) for t in range(len(TASKS))]
        axes[2].plot(range(len(trajectory)), [100 * x for x in trajectory], "o-", color=colours[name])
    axes[0].set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [k.replace("_held_out", "\nheld-out") for k in keys])
    axes[0].set_title("new tasks after the last task (%)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(np.arange(len(scenes.FAMILIES)) + 0.4 - width / 2, scenes.FAMILIES)
    axes[1].set_title("forgetting per old family, shipped - final (points)", fontsize=10)
    axes[2].set_xticks(range(len(TASKS) + 1), ["shipped", *(f"after {t}" for t in TASKS)])
    axes[2].set_title("old families' mean accuracy (%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "dual_teacher.png", dpi=110)
    plt.close(fig)
    return "dual_teacher.png"


def report(config: Config, before: dict, runs: list[dict], variants: list[str], command: str, minutes: float
           ) -> str:
    table = summary(before, runs)
    seeds = sorted({r["seed"] for r in runs})
    t1, t2 = TASKS
    lines = [
        "# Continual adaptation with dual teachers", "",
        (f"Command: `{command}` ({len(seeds)} seed(s): {seeds}; this invocation {minutes:.0f} min on the shared "
         "2-core machine; runs already in --work are read, not rerun)."), "",
        (f"The shipped tiny LLaVA learns `{t1}` (\"What size is the red circle?\") for {config.steps} steps, then "
         f"`{t2}` (\"Which side is the red circle on?\") for {config.steps} steps, {config.batch} scenes x "
         f"{config.turns} labelled turns + {config.ref_turns} unlabelled reference prompts per step, AdamW lr "
         f"{config.lr}; distillation weight lambda = {config.lam}, graph temperature tau = {config.tau}, graphs "
         f"{config.graphs}. Accuracy: teacher-forced exact answers on {config.val_scenes} validation scenes; "
         "`held-out`: questions about the six colour-shape combinations no training prompt names. Mean ± sd over "
         "seeds."), "",
        (f"| variant | {t1} | {t1} held-out | {t2} | {t2} held-out | old families | forgetting, old (points) | "
         f"forgetting, {t1} (points) |"),
        "|---|---|---|---|---|---|---|---|",
        "| shipped model | " + " | ".join(f"{100 * before.get(k, np.nan):.1f}" for k in (
            t1, f"{t1}_held_out", t2, f"{t2}_held_out", "old")) + " | – | – |"]
    for name in variants:
        s = table[name]
        lines.append(f"| {name} | " + " | ".join(_mean_sd(s.get(k, [np.nan])) for k in (
            t1, f"{t1}_held_out", t2, f"{t2}_held_out", "old", "forget_old", f"forget_{t1}")) + " |")
    lines += ["", f"After the first task ({t1}) only:", "",
              f"| variant | {t1} | {t1} held-out | old families |", "|---|---|---|---|"]
    for name in variants:
        s = table[name]
        lines.append(f"| {name} | " + " | ".join(_mean_sd(s.get(f"after_{t1}_{k}", [np.nan])) for k in
                                                 (t1, f"{t1}_held_out", "old")) + " |")
    lines += ["", "Old families after the last task (%, mean over seeds):", "",
              "| variant | " + " | ".join(scenes.FAMILIES) + " |", "|---|" + "---|" * len(scenes.FAMILIES),
              "| shipped model | " + " | ".join(f"{100 * before.get(f, np.nan):.1f}" for f in scenes.FAMILIES) + " |"]
    for name in variants:
        lines.append(f"| {name} | " + " | ".join(f"{100 * np.mean(table[name].get(f, np.nan)):.1f}" for f in scenes.FAMILIES)
                     + " |")
    lines += ["", "Mean weight of T0 (w0; w1 = 1 - w0) per task, labelled turns / reference turns, per seed:", ""]
    for name in variants:
        if VARIANTS[name] is None:
            continue
        cells = [f"{st['task']} {st['w0_task_turns']:.2f} / {st['w0_reference_turns']:.2f}"
                 for r in runs if r["variant"] == name for st in r["stages"]]
        lines.append(f"- {name}: " + "; ".join(cells))
    lines += ["", "![dual teacher](dual_teacher.png)", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    argv = sys.argv[3:] if sys.argv[1:3] == ["train", "dual-teacher"] else sys.argv[1:]
    command = "tokencomp train dual-teacher " + shlex.join(argv)
    start = time.time()
    torch.set_num_threads(config.threads)
    out, work = Path(config.out), Path(config.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    shipped = LlavaForConditionalGeneration.from_pretrained(config.model).eval().requires_grad_(False)
    processor = AutoProcessor.from_pretrained(config.model)
    tokenizer = processor.tokenizer
    train_feats = cache_features(shipped, processor, "train", config.train_scenes, work)
    val_feats = cache_features(shipped, processor, "val", config.val_scenes, work)
    before_path = work / f"before_{config.val_scenes}.json"
    if not before_path.exists():
        before_path.write_text(json.dumps(evaluate(shipped, tokenizer, val_feats, config.batch)))
    before = json.loads(before_path.read_text())
    variants, runs, first_task = config.variants.split(","), [], {}
    model_dir = work / "model"
    for seed in range(config.first_seed, config.first_seed + config.seeds):
        for variant in variants:
            done = work / f"seed{seed}_{variant}.json"
            if not done.exists():
                run_start = time.time()
                result = run_variant(config, seed, variant, shipped, tokenizer, train_feats, val_feats, first_task)
                result["minutes"] = (time.time() - run_start) / 60
                model = result.pop("model")
                if seed == 0 and variant == METHOD:
                    save_llava_hf(model, model_dir, processor)
                done.write_text(json.dumps(result))
            runs.append(json.loads(done.read_text()))
    write_task_split("test", config.serve_scenes, work / "newtasks_test")
    minutes = (time.time() - start) / 60
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "before": before, "runs": runs,
                                                  "summary": summary(before, runs), "model": str(model_dir),
                                                  "minutes": minutes}, indent=1))
    plot(before, runs, variants, out)
    (out / "report.md").write_text(report(config, before, runs, variants, command, minutes))
    print(f"wrote {out / 'report.md'}; model {model_dir}")
    return 0
