"""Recipe: upcycle the shipped tiny LLaVA into a Mixtral-style mixture of experts, teach it a new question family
by training only the experts that family routes to (and the routers), compare with training every expert and with
dense fine-tuning of the shipped model, and export the result as a LLaVA with a Mixtral text model.

    tokencomp train moe-llava --out training/reports/moe [--work runs/moe-llava] [--seeds 2] [--smoke]

Per seed:
1. upcycle: every LLM MLP -> E copies + a random top-k router (`training/moe.py`); the logits of the upcycled
   model are checked against the dense model's on validation sequences (the largest difference is reported);
2. MoE stage: routers and experts (nothing else) train on the old question families over cached tower features,
   with the Switch/Mixtral load-balancing loss, so that routing and experts diverge from the copies;
3. new task, "What size is the <colour> <shape>?" -> small / medium / large (a family the model never answered; its
   words are in the vocabulary already, "size" as word pieces), trained on its questions alone, from the same
   start, on the same batches, four ways (`--variants`): `moe-top-u` (the u experts per layer with the most
   routing mass on the task's question and answer tokens, + routers), `moe-random-u` (u experts per layer drawn at
   random, + routers: the control for the routing-mass choice), `moe-all` (every expert + routers) and `dense`
   (the shipped model, every LLM weight). With `--replay R` each training sequence is, with probability R, one of
   the old families' (same scenes) instead of the new one's: replay of old data against forgetting. Each reports
   trainable parameters, the median step time, the peak bytes allocated by its first step
   (torch.profiler's CPU memory events: activations + gradients + AdamW state), teacher-forced accuracy per
   family on validation scenes (an answer counts when every token and the end token are predicted: exactly
   when greedy decoding gives it), and forgetting (old-family accuracy before minus after);
4. seed 0's `moe-top-u` model is saved in the hub layout (work/model-<key digest>) and scored with the model
   card's scorer (greedy answers through `serving/hf_reference.py`) on the test split: old families and the new
   one.
Writes results.json, report.md and PNGs to --out. Resumable: the MoE stage and the shared per-seed measurements are
kept in --work (moe_seed<N>.pt/json, seed<N>.json), each new-task run in work/variants.jsonl under the settings it
depends on (`task_key`), reused only when they match.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training import model_card, scenes
from tokencomp.training.llava_loss import lm_loss
from tokencomp.training.llava_parts import tower_features
from tokencomp.training.moe import experts_of, router_load_loss, save_moe_llava, split_experts, upcycle
from tokencomp.training.moe_partial import (
    RouterRecorder,
    peak_step_bytes,
    random_experts,
    routing_mass,
    top_experts,
    train_only_experts,
)
from tokencomp.training.optimizers import make_optimizer
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence

NEW_FAMILY = "size_name"
VARIANTS = ("moe-top-u", "moe-random-u", "moe-all", "dense")
GROUPS = ("image", "text")  # routing-mass groups: image tokens; question and answer tokens


@dataclass
class Config:
    model: str = "models/tokencomp-tiny-llava"
    out: str = "training/reports/moe"
    work: str = "runs/moe-llava"
    seeds: int = 2
    first_seed: int = 0  # seeds first_seed ... first_seed + seeds - 1 (separate processes can share --work)
    experts: int = 4
    top_k: int = 2
    u: int = 1
    router_std: float = 0.02
    train_scenes: int = 1000
    val_scenes: int = 50
    mass_scenes: int = 48
    moe_steps: int = 60
    task_steps: int = 60
    batch: int = 4
    turns: int = 12
    keep_background: float = 0.25  # training sequences show every object and letter patch and this share of the rest
    moe_lr: float = 1e-3
    task_lr: float = 2e-3
    replay: float = 0.0  # share of new-task training sequences that are old-family ones instead
    load_coef: float = 0.01
    card_questions: int = 40
    threads: int = 2
    variants: tuple[str, ...] = VARIANTS

    @classmethod
    def smoke(cls, **overrides) -> Config:
        return cls(**{"seeds": 1, "train_scenes": 12, "val_scenes": 4, "mass_scenes": 4, "moe_steps": 2,
                      "task_steps": 2, "batch": 2, "turns": 3, "card_questions": 4, **overrides})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in fields(Config):
        if f.name != "variants":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None, help="new-task runs to make")
    parser.add_argument("--smoke", action="store_true", help="a run of a minute or two on a few scenes, for tests")


def config_from_args(args: argparse.Namespace) -> Config:
    given = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    if "variants" in given:
        given["variants"] = tuple(dict.fromkeys(given["variants"]))
    config = Config.smoke(**given) if args.smoke else Config(**given)
    for f in fields(Config):
        value = getattr(config, f.name)
        if f.type in ("int", "float") and not value > 0 and f.name not in (
                "router_std", "load_coef", "keep_background", "first_seed", "card_questions", "replay"):
            raise ValueError(f"--{f.name.replace('_', '-')} must be > 0, got {value}")
    if config.first_seed < 0 or config.card_questions < 0:
        raise ValueError(f"--first-seed and --card-questions must be >= 0, got {config.first_seed}, "
                         f"{config.card_questions}")
    if not 0 <= config.replay < 1:
        raise ValueError(f"--replay must be in [0, 1), got {config.replay}")
    if not 0 <= config.keep_background <= 1:
        raise ValueError(f"--keep-background must be in [0, 1], got {config.keep_background}")
    if not 1 <= config.top_k <= config.experts or not 1 <= config.u <= config.experts:
        raise ValueError(f"need 1 <= --top-k, --u <= --experts ({config.experts}); got top-k {config.top_k}, "
                         f"u {config.u}")
    if not (Path(config.model) / "config.json").exists():
        raise ValueError(f"--model {config.model!r} is not a model folder (no config.json)")
    return config


def size_questions(scene: scenes.Scene) -> list[dict]:
    """The new family: the size word of every object the scene names unambiguously."""
    return [{"family": NEW_FAMILY, "question": f"What size is the {o.name}?", "answer": o.size}
            for o in scenes.unique(scene.objects, lambda o: o.name)]


def _old_questions(split: str, index: int, rng: random.Random, turns: int) -> list[dict]:
    return scenes.training_questions(scenes.make_scene(split, index), rng, turns)


def _new_questions(split: str, index: int, rng: random.Random, turns: int) -> list[dict]:
    qs = size_questions(scenes.make_scene(split, index))
    rng.shuffle(qs)
    return qs[:turns]


def _eval_questions(index: int) -> list[dict]:
    """Every old-family question of validation scene `index` and up to two of the new family."""
    scene = scenes.make_scene("val", index)
    return scene.questions + size_questions(scene)[:2]


@torch.no_grad()
def cache_features(model, processor, split: str, count: int, work: Path) -> torch.Tensor:
    """Feature-layer patches [count, 576, Dv] (float16) of the frozen tower, cached in `work`."""
    path = work / f"features_{split}_{count}.pt"
    if path.exists():
        return torch.load(path)
    out = []
    for start in tqdm(range(0, count, 32), desc=f"cache {split}"):
        images = [scenes.render(scenes.make_scene(split, i)) for i in range(start, min(count, start + 32))]
        pixels = processor.image_processor(images, return_tensors="pt").pixel_values
        out.append(tower_features(model, pixels).half())
    feats = torch.cat(out)
    torch.save(feats, path)
    return feats


def _batch(tokenizer, feats: torch.Tensor, indices, questions: list[list[dict]], rng: np.random.Generator,
           kept: list[np.ndarray] | None = None):
    """(ids, labels, mask, positions, image rows [M, Dv], owners) of one sequence per scene: its questions as
    turns over its patches (all, or kept[i] of scene i)."""
    indices = [int(i) for i in indices]
    kept = kept or [np.arange(feats.shape[1])] * len(indices)
    rows = [qa_sequence(tokenizer, qs, len(k), rng) for qs, k in zip(questions, kept)]
    ids, labels, mask, positions, owners = pad_batch(rows, tokenizer.pad_token_id)
    image = torch.cat([feats[i][torch.from_numpy(k)] for i, k in zip(indices, kept)]).float()
    return ids, labels, mask, positions, image, owners


def _kept_patches(scene: scenes.Scene, keep_background: float, rng: np.random.Generator) -> np.ndarray:
    """Every patch of an object or a sign letter, and each other patch with probability `keep_background`."""
    labels = scenes.patch_labels(scene)
    content = (labels["colour"] > 0) | (labels["letter"] > 0)
    return np.flatnonzero(content | (rng.random(content.shape) < keep_background))


def _train_batches(tokenizer, feats, make: Callable, config: Config, steps: int, seed: int,
                   replay: float = 0.0) -> Iterator[tuple]:
    """`steps` training batches of `config.batch` scenes (those with `make`'s questions) with `make`'s questions, or,
    for each scene with probability `replay`, the old families' questions; the sequences show a `keep_background`
    share of the background (whole images cost several times the compute). replay = 0 draws no extra random
    numbers, so its batches are those of a recipe without replay."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    pool = [i for i in range(len(feats)) if make("train", i, pick, config.turns)]
    replayed = random.Random(seed + 1)
    for _ in range(steps):
        idx = rng.choice(pool, config.batch, replace=False)
        kept = [_kept_patches(scenes.make_scene("train", int(i)), config.keep_background, rng) for i in idx]
        makes = [_old_questions if replay and replayed.random() < replay else make for _ in idx]
        yield _batch(tokenizer, feats, idx, [m("train", int(i), pick, config.turns) for m, i in zip(makes, idx)],
                     rng, kept)


def _groups(ids: torch.Tensor, tokenizer, image_token: int) -> torch.Tensor:
    """[B * L] routing-mass group of each token: 0 image, 1 text, -1 padding."""
    groups = torch.where(ids == image_token, 0, 1)
    return groups.masked_fill(ids == tokenizer.pad_token_id, -1).flatten()


@torch.no_grad()
def evaluate(model, tokenizer, feats: torch.Tensor, batch: int) -> dict[str, float]:
    """Teacher-forced exact-answer accuracy per family on the validation scenes, the old families' mean
    ('old', each family weighted alike) and the new one's."""
    model.eval()
    right: dict[str, list[bool]] = {}
    rng = np.random.default_rng(0)
    for start in range(0, len(feats), batch):
        idx = list(range(start, min(len(feats), start + batch)))
        questions = [_eval_questions(i) for i in idx]
        ids, labels, mask, positions, rows, owners = _batch(tokenizer, feats, idx, questions, rng)
        _, ok, _ = lm_loss(model, ids, labels, mask, positions, rows)
        owners = owners[:, 1:]
        for row, qs in enumerate(questions):
            for q, question in enumerate(qs):
                right.setdefault(question["family"], []).append(bool(ok[row][owners[row] == q].all()))
    model.train()
    scores = {f: float(np.mean(v)) for f, v in sorted(right.items())}
    scores["old"] = float(np.mean([scores[f] for f in scenes.FAMILIES if f in scores]))
    return scores


def _step(model, opt, params, tokenizer, recorder: RouterRecorder | None, load_coef: float, batch: tuple) -> float:
    """One AdamW step on a batch from `_train_batches`: answer loss, + load_coef x the load-balancing loss of
    the routers that `recorder` saw (None: the model does not route). Returns the loss."""
    ids, labels, mask, positions, rows, _ = batch
    loss, _, _ = lm_loss(model, ids, labels, mask, positions, rows)
    if recorder is not None:
        logits = [out[0] for out in recorder.take()]
        top_k = model.config.text_config.num_experts_per_tok
        loss = loss + load_coef * router_load_loss(logits, top_k, (ids != tokenizer.pad_token_id).flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def train(model, params: list[torch.nn.Parameter], tokenizer, batches: Iterator[tuple], lr: float,
          load_coef: float, steps: int, desc: str) -> dict:
    """AdamW on `params` over `batches` (answer loss + load_coef x load-balancing loss when the model routes).
    Returns the median step seconds (steps after the first), the first step's peak allocated bytes, and the
    last loss."""
    opt = make_optimizer("adamw", params, lr)
    routes = hasattr(model.model.language_model.layers[0].mlp, "gate")
    times, peak, loss = [], 0, float("nan")
    model.train()
    with RouterRecorder(model) if routes else contextlib.nullcontext() as recorder:
        for step, batch in enumerate(tqdm(batches, total=steps, desc=desc)):
            one_step = functools.partial(_step, model, opt, params, tokenizer, recorder, load_coef, batch)
            if step == 0:
                peak = peak_step_bytes(one_step)
            else:
                start = time.perf_counter()
                loss = one_step()
                times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times) if times else float("nan"), "peak_step_bytes": peak, "loss": loss}


@torch.no_grad()
def mass_on(model, tokenizer, feats, make: Callable, config: Config, split: str) -> torch.Tensor:
    """[layers, groups, E] routing mass of `model` on the first `mass_scenes` scenes of `split` with `make`'s
    questions."""
    model.eval()
    image_token = model.config.image_token_index
    total = None
    pick, rng = random.Random(0), np.random.default_rng(0)
    indices = [i for i in range(min(config.mass_scenes, len(feats))) if make(split, i, pick, config.turns)]
    with RouterRecorder(model) as recorder:
        for start in range(0, len(indices), config.batch):
            idx = indices[start:start + config.batch]
            ids, labels, mask, positions, rows, _ = _batch(
                tokenizer, feats, idx, [make(split, i, pick, config.turns) for i in idx], rng)
            lm_loss(model, ids, labels, mask, positions, rows)
            mass = routing_mass(recorder.take(), _groups(ids, tokenizer, image_token), len(GROUPS),
                                config.experts)
            total = mass if total is None else total + mass
    model.train()
    return total


def _trainable(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def _frozen_unchanged(before: dict[str, torch.Tensor], model) -> bool:
    """Whether every parameter that was frozen is bit-identical to `before`."""
    return all(torch.equal(before[name], p) for name, p in model.named_parameters() if not p.requires_grad)


_TASK_KEY = ("model", "experts", "top_k", "u", "router_std", "train_scenes", "val_scenes", "mass_scenes", "moe_steps",
             "task_steps", "batch", "turns", "keep_background", "moe_lr", "task_lr", "replay", "load_coef")


def task_key(config: Config) -> dict:
    """The settings a new-task run depends on besides its seed and variant: a run in work/variants.jsonl is
    reused only under the same key."""
    return {name: getattr(config, name) for name in _TASK_KEY}


def key_digest(config: Config) -> str:
    """8 hex digits naming `task_key(config)` (the exported model's folder)."""
    return hashlib.sha1(json.dumps(task_key(config), sort_keys=True).encode()).hexdigest()[:8]


def _shared(config: Config, seed: int, dense, moe, tokenizer, train_feats, val_feats, work: Path) -> dict:
    """What every variant of a seed starts from: the upcycling check, the MoE stage (trained, or read from work),
    accuracy before the new task and the routing masses; kept in work/seed<N>.json."""
    path = work / f"seed{seed}.json"
    state_path = work / f"moe_seed{seed}.pt"
    if path.exists() and state_path.exists():
        split_experts(moe)
        moe.load_state_dict(torch.load(state_path))
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("variants", "chosen")}
    result: dict = {"seed": seed, "minutes": 0.0}
    start = time.time()
    ids, labels, mask, positions, rows, _ = _batch(tokenizer, val_feats, range(min(4, len(val_feats))),
                                                   [_eval_questions(i) for i in range(min(4, len(val_feats)))],
                                                   np.random.default_rng(0))
    with torch.no_grad():
        dense_logits = dense.lm_head(lm_loss(dense.eval(), ids, labels, mask, positions, rows)[2][-1])
        moe_logits = moe.lm_head(lm_loss(moe.eval(), ids, labels, mask, positions, rows)[2][-1])
    result["upcycle_max_abs_logit_diff"] = float((dense_logits - moe_logits).abs().max())
    split_experts(moe)
    params = train_only_experts(moe, torch.arange(config.experts).expand(len(experts_of(moe)), -1))
    if state_path.exists():
        moe.load_state_dict(torch.load(state_path))
        result["moe_stage"] = json.loads((work / f"moe_seed{seed}.json").read_text())
    else:
        batches = _train_batches(tokenizer, train_feats, _old_questions, config, config.moe_steps, seed)
        stats = train(moe, params, tokenizer, batches, config.moe_lr, config.load_coef, config.moe_steps, "MoE stage")
        result["moe_stage"] = stats
        torch.save(moe.state_dict(), state_path)
        (work / f"moe_seed{seed}.json").write_text(json.dumps(stats))
    result["dense_before"] = evaluate(dense, tokenizer, val_feats, config.batch)
    result["moe_before"] = evaluate(moe, tokenizer, val_feats, config.batch)
    result["mass_new"] = mass_on(moe, tokenizer, train_feats, _new_questions, config, "train").tolist()
    result["mass_old"] = mass_on(moe, tokenizer, train_feats, _old_questions, config, "train").tolist()
    result["minutes"] = (time.time() - start) / 60
    path.write_text(json.dumps(result))
    return result


def run_seed(config: Config, seed: int, dense, processor, train_feats, val_feats, work: Path) -> dict:
    """One seed: the shared start (`_shared`), then every variant in `config.variants` trained on the new task
    (or read from work/variants.jsonl under the same `task_key`); seed 0's `moe-top-u` model is exported to
    work/model-<key digest> when trained here."""
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    moe = upcycle(dense, config.experts, config.top_k, config.router_std, seed=seed)
    result = _shared(config, seed, dense, moe, tokenizer, train_feats, val_feats, work)
    split_experts(moe)
    chosen = top_experts(torch.tensor(result["mass_new"])[:, GROUPS.index("text")], config.u)
    picks = {"moe-top-u": chosen, "moe-random-u": random_experts(len(chosen), config.experts, config.u, seed),
             "moe-all": torch.arange(config.experts).expand(len(chosen), -1)}
    result["chosen"], result["random"] = chosen.tolist(), picks["moe-random-u"].tolist()
    result["variants"] = {}
    done_path, key = work / "variants.jsonl", task_key(config)
    done = [json.loads(line) for line in done_path.open()] if done_path.exists() else []
    for name in config.variants:
        found = [r for r in done if r["seed"] == seed and r["variant"] == name and r["key"] == key]
        if found:
            result["variants"][name] = found[-1]["result"]
            continue
        model = copy.deepcopy(dense if name == "dense" else moe)
        if name == "dense":
            model.requires_grad_(False)
            model.model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            params = train_only_experts(model, picks[name])
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        batches = _train_batches(tokenizer, train_feats, _new_questions, config, config.task_steps, seed + 1,
                                 config.replay)
        start = time.time()
        stats = train(model, params, tokenizer, batches, config.task_lr, config.load_coef, config.task_steps, name)
        base = result["dense_before" if name == "dense" else "moe_before"]
        after = evaluate(model, tokenizer, val_feats, config.batch)
        run = {**stats, "trainable": _trainable(params), "total": sum(p.numel() for p in model.parameters()),
               "frozen_bit_identical": _frozen_unchanged(before, model), "after": after,
               "forgetting": base["old"] - after["old"], "minutes": (time.time() - start) / 60}
        with done_path.open("a") as f:
            f.write(json.dumps({"seed": seed, "variant": name, "key": key, "result": run}) + "\n")
        result["variants"][name] = run
        if name == "moe-top-u" and seed == 0:
            save_moe_llava(model.eval(), work / f"model-{key_digest(config)}", processor)
    return result


def card_scores(model_dir: Path, count: int) -> dict:
    """The model card's greedy scorer on the first `count` test questions (old families) and on the new
    family's questions of the first test scenes (as many)."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = lambda r: scenes.render(scenes.make_scene("test", r["scene"]))
    old, _ = model_card.score(model, processor, model_card.fixed_questions(count), image)
    rows, index = [], 0
    while len(rows) < count:
        rows += [{**q, "scene": index} for q in size_questions(scenes.make_scene("test", index))[:2]]
        index += 1
    new, _ = model_card.score(model, processor, rows[:count], image)
    return {"old": old, "new": new[NEW_FAMILY], "questions": count}


def _mean_sd(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{100 * mean:.1f}" if len(values) < 2 else f"{100 * mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def _paired(results: list[dict], get: Callable[[dict], float]) -> str:
    """Per seed, `get` of moe-top-u minus that of moe-random-u, in points."""
    return ", ".join(f"{100 * (get(r['variants']['moe-top-u']) - get(r['variants']['moe-random-u'])):+.1f}"
                     for r in results)


_COLOURS = {"moe-top-u": "tab:green", "moe-random-u": "tab:orange", "moe-all": "tab:blue", "dense": "tab:gray"}


def plot(results: list[dict], variants: tuple[str, ...], out: Path) -> list[str]:
    """moe.png (each variant's new-task accuracy, forgetting, trainable parameters, first-step peak; bars = mean,
    dots = seeds) and routing.png (seed 0's routing-mass shares per layer and expert; red: the top-u experts,
    dashed orange: the random ones)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    metrics = (("new-task accuracy (%)", lambda v: 100 * v["after"][NEW_FAMILY]),
               ("forgetting, old families (points)", lambda v: 100 * v["forgetting"]),
               ("trainable parameters (M)", lambda v: v["trainable"] / 1e6),
               ("first-step peak allocation (MB)", lambda v: v["peak_step_bytes"] / 1e6))
    for ax, (title, get) in zip(axes, metrics):
        for x, name in enumerate(variants):
            values = [get(r["variants"][name]) for r in results]
            ax.bar(x, np.mean(values), color=_COLOURS[name], alpha=0.7)
            ax.scatter([x] * len(values), values, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(variants)), variants, fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "moe.png", dpi=110)
    plt.close(fig)

    first = results[0]
    panels = (("old families, image tokens", first["mass_old"], 0), ("old families, text tokens", first["mass_old"], 1),
              ("new task, image tokens", first["mass_new"], 0), ("new task, text tokens", first["mass_new"], 1))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (title, mass, group) in zip(axes, panels):
        share = np.array(mass)[:, group]
        share = share / share.sum(-1, keepdims=True)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        for layer, picks in enumerate(first["chosen"]):
            for e in picks:
                ax.add_patch(plt.Rectangle((e - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        if "moe-random-u" in variants:
            for layer, picks in enumerate(first["random"]):
                for e in picks:
                    ax.add_patch(plt.Rectangle((e - 0.4, layer - 0.4), 0.8, 0.8, fill=False, edgecolor="orange",
                                               lw=1.5, ls="--"))
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of the layer's routing mass")
    fig.savefig(out / "routing.png", dpi=110)
    plt.close(fig)
    return ["moe.png", "routing.png"]


def report(config: Config, results: list[dict], card: dict, command: str, minutes: float, model_dir: Path) -> str:
    lines = [
        "# Multimodal MoE with partial expert updates", "",
        (f"Command: `{command}` on the shared 2-core machine ({len(results)} seed(s); this invocation took "
         f"{minutes:.0f} min: runs already in --work under the same settings are read, not rerun; each run's own "
         "minutes are in results.json)."), "",
        (f"The shipped tiny LLaVA's LLaMA is upcycled into a Mixtral text model, E = {config.experts} experts per "
         f"layer, top-{config.top_k} routing; a MoE stage trains routers and experts on the old families "
        f"({config.moe_steps} steps of {config.batch} scenes x {config.turns} questions); then the new family "
        f"(\"What size is the <colour> <shape>?\", answers small / medium / large) trains for {config.task_steps} "
        f"steps on its own questions (lr {config.task_lr}, u = {config.u}"
        + (f"; each sequence is with probability {config.replay} an old-family one instead: replay" if config.replay
           else "; no replay of old data") + "), every variant on the same batches. Accuracy is teacher-forced "
        "exact answers on "
        f"{config.val_scenes} validation scenes; forgetting is the old families' mean accuracy before minus after."),
        "", "Upcycling check: largest |difference| of the logits on 4 validation scenes' sequences, dense vs "
        "upcycled at init: "
        + ", ".join(f"{r['upcycle_max_abs_logit_diff']:.2g}" for r in results) + ".", "",
        ("| variant | trainable params | median step (s) | first-step peak (MB) | new task (%) | old families (%) | "
         "forgetting (points) | frozen experts bit-identical |"),
        "|---|---|---|---|---|---|---|---|"]
    for name in config.variants:
        runs = [r["variants"][name] for r in results]
        lines.append(
            f"| {name} | {runs[0]['trainable']:,} of {runs[0]['total']:,} | "
            f"{statistics.median(v['step_s'] for v in runs):.3f} | "
            f"{statistics.median(v['peak_step_bytes'] for v in runs) / 1e6:.1f} | "
            f"{_mean_sd([v['after'][NEW_FAMILY] for v in runs])} | {_mean_sd([v['after']['old'] for v in runs])} | "
            f"{_mean_sd([v['forgetting'] for v in runs])} | {all(v['frozen_bit_identical'] for v in runs)} |")
    lines += ["", "Before the new task (old families' mean, new family): dense "
              + ", ".join(f"{100 * r['dense_before']['old']:.1f} / {100 * r['dense_before'][NEW_FAMILY]:.1f}"
                          for r in results)
              + "; MoE after its stage " + ", ".join(
                  f"{100 * r['moe_before']['old']:.1f} / {100 * r['moe_before'][NEW_FAMILY]:.1f}" for r in results)
              + " (per seed).", "",
              "Per family after the new task (mean over seeds, %):", "",
              "| variant | " + " | ".join((*scenes.FAMILIES, NEW_FAMILY)) + " |",
              "|---|" + "---|" * (len(scenes.FAMILIES) + 1)]
    for name in ("dense (before)", "moe (before)", *config.variants):
        if name.endswith("(before)"):
            scores = [r["dense_before" if name.startswith("dense") else "moe_before"] for r in results]
        else:
            scores = [r["variants"][name]["after"] for r in results]
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * np.mean([s.get(f, float('nan')) for s in scores]):.1f}" for f in (*scenes.FAMILIES, NEW_FAMILY))
            + " |")
    lines += ["", "Experts trained by `moe-top-u` (per layer, by routing mass on the new task's question and "
              "answer tokens): " + "; ".join(f"seed {r['seed']}: {r['chosen']}" for r in results) + "."]
    if {"moe-top-u", "moe-random-u"} <= set(config.variants):
        same = [sum(a == b for a, b in zip(r["chosen"], r["random"])) for r in results]
        lines += ["", "Drawn at random for `moe-random-u`: " + "; ".join(
            f"seed {r['seed']}: {r['random']} ({n} of {len(r['chosen'])} layers the same as top-u)"
            for r, n in zip(results, same)) + ".", "",
            "Top-u minus random-u on the same batches, per seed (points): new task "
            + _paired(results, lambda v: v["after"][NEW_FAMILY]) + "; forgetting "
            + _paired(results, lambda v: v["forgetting"]) + "."]
    lines += ["", "![variants](moe.png)", "", "![routing](routing.png)", ""]
    if card:
        old = card["old"]
        lines += [f"Seed 0's `moe-top-u` model (`{model_dir}`), exported in the hub layout and scored by the model "
                  "card's greedy "
                  f"scorer on the test split ({card['questions']} old-family questions; {card['questions']} "
                  f"new-family ones): old overall {100 * old['overall']:.1f} % ("
                  + ", ".join(f"{f} {100 * old[f]:.0f}" for f in scenes.FAMILIES if f in old)
                  + f"), new family {100 * card['new']:.1f} %.", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    command = "tokencomp train moe-llava " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["train", "moe-llava"]
                                                           else sys.argv[1:])
    start = time.time()
    torch.set_num_threads(config.threads)
    out, work = Path(config.out), Path(config.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    dense = LlavaForConditionalGeneration.from_pretrained(config.model).eval()
    processor = AutoProcessor.from_pretrained(config.model)
    dense.requires_grad_(False)
    train_feats = cache_features(dense, processor, "train", config.train_scenes, work)
    val_feats = cache_features(dense, processor, "val", config.val_scenes, work)
    model_dir = work / f"model-{key_digest(config)}"
    results = [run_seed(config, seed, dense, processor, train_feats, val_feats, work)
               for seed in range(config.first_seed, config.first_seed + config.seeds)]
    card = card_scores(model_dir, config.card_questions) if config.card_questions and model_dir.exists() else {}
    minutes = (time.time() - start) / 60
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "seeds": results, "card": card,
                                                  "model": str(model_dir), "minutes": minutes}, indent=1))
    plot(results, config.variants, out)
    (out / "report.md").write_text(report(config, results, card, command, minutes, model_dir))
    print(f"wrote {out / 'report.md'}; model {model_dir}")
    return 0
