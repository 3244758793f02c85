"""Recipe: reprogram the frozen shipped model to the "palette" task (`training/reprogramming_task.py`) with a
padding visual prompt and each label mapping (RLM, FLM, ILM, BLM, BLM+, OTLM), and report test accuracy with
and without the prompt over several seeds (a seed picks the training examples, RLM's draw and the batch order).

Per mapping and seed: the mapping is estimated on the training set without a prompt, the prompt (zero at the
start) is trained by Adam through the frozen model on cross-entropy of the mapped scores, and the iterative
mappings (ILM, BLM, BLM+, OTLM) are re-estimated with the current prompt at the start of every later epoch, as
in their papers; RLM and FLM stay as first estimated. Without a prompt, ILM is FLM.

    tokencomp train visual-prompt --out training/reports/visual_prompt [--smoke] [--seeds 3]

Writes results.json, report.md, accuracy.png, and the served artefacts of OTLM's first seed
(otlm_prompt.safetensors for `tokencomp serve --visual-prompt`, otlm_label_map.json for `tokencomp eval
--label-map`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokencomp.training import label_mapping as lm
from tokencomp.training import reprogramming_task as task
from tokencomp.training.visual_prompt import PaddingPrompt

DEFAULTS = {"model": "models/tokencomp-tiny-llava", "out": "training/reports/visual_prompt", "seeds": 3,
            "train": 24, "test": 60, "epochs": 3, "batch": 8, "lr": 0.03, "width": 28, "mass": 0.9,
            "solver": "exact", "lam": 1.0, "topk": 1, "threads": 2}
SMOKE = {"seeds": 1, "train": 6, "test": 6, "epochs": 2, "batch": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULTS["model"], help="frozen LLaVA checkpoint (transformers)")
    parser.add_argument("--out", default=DEFAULTS["out"], help="report directory")
    parser.add_argument("--smoke", action="store_true", help="a run of seconds, for tests")
    parser.add_argument("--mappings", default=",".join(lm.MAPPINGS), help="comma-separated subset of mappings")
    for name in ("seeds", "train", "test", "epochs", "batch", "width", "topk", "threads"):
        parser.add_argument(f"--{name}", type=int, default=None)
    for name in ("lr", "mass", "lam"):
        parser.add_argument(f"--{name}", type=float, default=None)
    parser.add_argument("--solver", default=None, help="OTLM's partial-OT solver: exact or entropic")


def _config(args: argparse.Namespace) -> dict:
    config = dict(DEFAULTS, **(SMOKE if args.smoke else {}))
    for key in DEFAULTS:
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    config["mappings"] = [m.strip() for m in args.mappings.split(",") if m.strip()]
    bad = [m for m in config["mappings"] if m not in lm.MAPPINGS]
    if bad:
        raise ValueError(f"unknown mapping(s) {bad}; expected a subset of {', '.join(lm.MAPPINGS)}")
    if not 0 < config["width"] <= task.MARGIN:
        raise ValueError(f"--width must be in 1..{task.MARGIN} (the task keeps objects that far from the border); "
                         f"got {config['width']}")
    return config


def accuracy(probs: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> float:
    return float((lm.target_log_scores(probs, w).argmax(1) == labels).float().mean())


def train_prompt(source: task.SourceClassifier, name: str, x: torch.Tensor, y: torch.Tensor, probs0: torch.Tensor,
                 config: dict, seed: int) -> tuple[PaddingPrompt, torch.Tensor]:
    """Prompt and final mapping W [V, T] for mapping `name` on training pixels x [N, 3, S, S], labels y [N]."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"lam": config["lam"], "topk": config["topk"], "mass": config["mass"], "solver": config["solver"]}
    prompt = PaddingPrompt(x.shape[-1], config["width"])
    optimizer = torch.optim.Adam(prompt.parameters(), lr=config["lr"])
    w = lm.estimate(name, probs0, y, len(task.LABELS), generator=generator, **kwargs)
    for epoch in range(config["epochs"]):
        if epoch > 0 and name in lm.ITERATIVE:
            w = lm.estimate(name, source.probabilities(x, prompt), y, len(task.LABELS), generator=generator, **kwargs)
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), config["batch"]):
            idx = order[i:i + config["batch"]]
            loss = F.cross_entropy(lm.target_log_scores(source(prompt(x[idx])).softmax(-1), w), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return prompt, w


def run_all(config: dict, out: Path) -> dict:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(config["threads"])
    processor = AutoProcessor.from_pretrained(config["model"])
    source = task.SourceClassifier(LlavaForConditionalGeneration.from_pretrained(config["model"]), processor)
    tokens = processor.tokenizer.convert_ids_to_tokens(list(range(source.model.config.text_config.vocab_size)))
    test_x, test_y = task.dataset(processor, "test", config["test"])
    test_probs0 = source.probabilities(test_x)
    runs = []
    bar = tqdm(total=config["seeds"] * len(config["mappings"]), desc="prompts")
    for seed in range(config["seeds"]):
        x, y = task.dataset(processor, "train", config["train"], start=seed * config["train"])
        probs0 = source.probabilities(x)
        for name in config["mappings"]:
            torch.manual_seed(seed)
            w0 = lm.estimate(name, probs0, y, len(task.LABELS), generator=torch.Generator().manual_seed(seed),
                             lam=config["lam"], topk=config["topk"], mass=config["mass"], solver=config["solver"])
            start = time.perf_counter()
            prompt, w = train_prompt(source, name, x, y, probs0, config, seed)
            seconds = time.perf_counter() - start
            acc = accuracy(source.probabilities(test_x, prompt), w, test_y)
            runs.append({"mapping": name, "seed": seed, "no_prompt": accuracy(test_probs0, w0, test_y),
                         "prompt": acc, "train_seconds": round(seconds, 1)})
            if name == "otlm" and seed == 0:
                prompt.save(out / "otlm_prompt.safetensors")
                lm.save_label_map(out / "otlm_label_map.json", w, tokens, list(task.LABELS), question=task.QUESTION,
                                  mapping=name)
            bar.update()
            bar.set_postfix(mapping=name, seed=seed, acc=f"{acc:.2f}")
    bar.close()
    return {"config": config, "trainable_prompt_values": PaddingPrompt(test_x.shape[-1], config["width"]).trainable(),
            "runs": runs}


def summarise(results: dict) -> dict[str, dict[str, list[float]]]:
    """mapping -> {"no_prompt": [per seed], "prompt": [per seed]}."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results["runs"]:
        row = table.setdefault(r["mapping"], {"no_prompt": [], "prompt": []})
        row["no_prompt"].append(r["no_prompt"])
        row["prompt"].append(r["prompt"])
    return table


def plot(table: dict, path: Path) -> None:
    names = list(table)
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, key, label in ((-0.18, "no_prompt", "no prompt"), (0.18, "prompt", "padding prompt")):
        values = [np.array(table[n][key]) * 100 for n in names]
        ax.bar(pos + offset, [v.mean() for v in values], 0.36, yerr=[v.std() for v in values], label=label,
               capsize=3, alpha=0.8)
        for i, v in enumerate(values):
            ax.scatter(np.full(len(v), pos[i] + offset), v, s=8, color="black", zorder=3)
    ax.axhline(100 / 3, color="grey", linestyle=":", label="chance")
    ax.set_xticks(pos, [n.upper() for n in names])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Palette task: frozen tiny LLaVA, label mapping +/- visual prompt (mean, std, seeds)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, out: Path, command: str, seconds: float) -> str:
    config, table = results["config"], summarise(results)
    targets = ", ".join(f"{k} = {' or '.join(v)}" for k, v in task.PALETTES.items())
    lines = [
        "# Visual prompt + label mapping on the palette task",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on this machine)",
        "",
        (f"Frozen model `{config['model']}`; question \"{task.QUESTION}\"; source classes: its next-token "
         f"vocabulary; targets {targets} on a dark background. Padding prompt of width {config['width']} px "
         f"({results['trainable_prompt_values']} values), Adam lr {config['lr']}, {config['epochs']} epochs, "
         f"batch {config['batch']}, {config['train']} training images per seed, {config['test']} test images "
         f"(the same for every seed), {config['seeds']} seeds. OTLM: POT's {config['solver']} partial solver, "
         f"mass {config['mass']}; BLM lambda {config['lam']}; BLM+ top-{config['topk']}."),
        "",
        "| mapping | no prompt (%) | padding prompt (%) | per seed, no prompt -> prompt |",
        "|---|---:|---:|---|",
    ]
    for name, row in table.items():
        a, b = np.array(row["no_prompt"]) * 100, np.array(row["prompt"]) * 100
        seeds = ", ".join(f"{x:.1f} -> {y:.1f}" for x, y in zip(a, b))
        lines.append(f"| {name.upper()} | {a.mean():.1f} ± {a.std():.1f} | {b.mean():.1f} ± {b.std():.1f} | {seeds} |")
    lines += ["", "Mean ± standard deviation over seeds; chance is 33.3 %. Without a prompt ILM is FLM.", "",
              "![accuracy](accuracy.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def main(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_all(config, out)
    seconds = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(summarise(results), out / "accuracy.png")
    command = "tokencomp train visual-prompt " + shlex.join(sys.argv[3:] if sys.argv[1:2] == ["train"] else [])
    print(write_report(results, out, command.strip(), seconds))
    return 0
