"""`tokencomp eval`: sweep methods x budgets over tasks against an endpoint (or a model served for the run).

Writes per-sample logs (resumable), `results.json` shaped like lmms-eval's (`results` -> task -> "metric,none"),
`table.md` with absolute scores and % of the unpruned model, and PNG plots of score, prompt tokens and latency
against the budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
from pathlib import Path

import tokencomp
from tokencomp.eval import tasks
from tokencomp.eval.runner import Setting, run_endpoint, summarise

BASELINES = ("random", "pool")  # several studies found them strong: a method must beat them to show anything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["synthetic"], help=f"tasks: {', '.join(tasks.TASKS)}")
    parser.add_argument("--methods", nargs="+", default=["id_pruner", "itg"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[64, 128])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--endpoint", help="an OpenAI-compatible server (…/v1) with the tokencomp plugin")
    target.add_argument("--model", help="a local model directory: served by `tokencomp serve` for this run")
    parser.add_argument("--in-process", action="store_true",
                        help="with --model: run vLLM's offline engine in this process instead of a server")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--data-dir", type=Path, default=None, help="local copy of the task's data")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-baselines", action="store_true", help=f"do not add {' and '.join(BASELINES)}")
    parser.add_argument("--out", type=Path, required=True, help="results folder (re-running resumes)")


def settings(methods: list[str], budgets: list[int], baselines: bool) -> list[Setting]:
    for m in methods:
        tokencomp.methods.get(m)
    if any(b < 1 for b in budgets):
        raise ValueError(f"--budgets must be positive integers, got {budgets}")
    chosen = [m for m in methods if m != "none"]
    if baselines:
        added = [b for b in BASELINES if b not in chosen]
        if added:
            print(f"tokencomp eval: adding baselines {', '.join(added)} (--no-baselines to skip)")
        chosen += added
    return [Setting("none", None)] + [Setting(m, k) for m in chosen for k in budgets]


def _model_dir(args: argparse.Namespace) -> str:
    from tokencomp.serving.server import DEFAULT_MODEL

    model = args.model or str(DEFAULT_MODEL)
    if not Path(model).is_dir():
        raise ValueError(f"--model must be a local model directory; {model!r} is not one")
    return model


@contextlib.contextmanager
def _runner(args: argparse.Namespace, out: Path):
    """A function (task, samples, setting, log) -> records: the offline engine, the given endpoint, or a server
    started for this run."""
    if args.in_process:
        if args.endpoint:
            raise ValueError("--in-process runs a local --model; it cannot be used with --endpoint")
        from tokencomp.eval.offline import OfflineEngine

        yield OfflineEngine(_model_dir(args)).run
        return

    def ask(endpoint: str):
        return lambda task, samples, setting, log: asyncio.run(run_endpoint(
            endpoint, task, samples, setting, log, concurrency=args.concurrency, api_key=args.api_key))

    if args.endpoint:
        yield ask(args.endpoint)
        return
    from tokencomp.serving.launcher import free_port, running
    from tokencomp.serving.server import ServerConfig

    with running(ServerConfig(model=_model_dir(args), port=free_port()), log=out / "server.log") as url:
        yield ask(url)


def run(args: argparse.Namespace) -> int:
    chosen = [tasks.get(name) for name in args.tasks]
    sweep = settings(args.methods, args.budgets, not args.no_baselines)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir} does not exist")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    args.out.mkdir(parents=True, exist_ok=True)
    samples = {t.name: t.load(args.data_dir, args.limit) for t in chosen}
    summary: dict[str, dict[str, dict]] = {}
    with _runner(args, args.out) as answer:
        for task in chosen:
            for setting in sweep:
                records = answer(task, samples[task.name], setting, args.out / task.name / f"{setting.label}.jsonl")
                summary.setdefault(task.name, {})[setting.label] = summarise(task, records)
    write_results(summary, sweep, args.budgets, args.out)
    print((args.out / "table.md").read_text())
    return 0


def write_results(summary: dict, sweep: list[Setting], budgets: list[int], out: Path) -> None:
    """results.json (lmms-eval's shape plus every detail), table.md and the plots."""
    results = {task: {f"{label},none": s["score"] for label, s in rows.items()} for task, rows in summary.items()}
    (out / "results.json").write_text(json.dumps({"results": results, "details": summary}, indent=1))
    methods = list(dict.fromkeys(s.method for s in sweep if s.method != "none"))
    lines, relative = [], {}
    for task, rows in summary.items():
        show = (lambda x: f"{x:.1f}") if tasks.get(task).unit == "points" else (lambda x: f"{100 * x:.1f}")
        full = rows["none"]["score"]
        lines += [f"### {task} (none: {show(full)}, {rows['none']['prompt_tokens']:.0f} prompt tokens)", "",
                  "| method | " + " | ".join(f"K={k}" for k in budgets) + " | mean % of none |",
                  "|---|" + "---:|" * (len(budgets) + 1)]
        for m in methods:
            cells, rel = [], []
            for k in budgets:
                s = rows[f"{m}@{k}"]
                rel.append(100 * s["score"] / full if full else math.nan)
                failed = f" ({s['failed']} failed)" if s["failed"] else ""
                cells.append(f"{show(s['score'])} ({rel[-1]:.0f}%){failed}")
            relative.setdefault(m, []).append(rel)
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {sum(rel) / len(rel):.1f} |")
        best = [max(methods, key=lambda m, k=k: rows[f"{m}@{k}"]["score"]) for k in budgets]
        lines += ["| best | " + " | ".join(best) + " | |", ""]
    if len(summary) > 1:  # relative performance as pruning papers report it: mean over tasks of score / none
        lines += ["### all tasks: mean % of none", "", "| method | " + " | ".join(f"K={k}" for k in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for m, per_task in relative.items():
            cols = [sum(r[i] for r in per_task) / len(per_task) for i in range(len(budgets))]
            lines.append(f"| {m} | " + " | ".join(f"{c:.1f}" for c in cols) + " |")
        lines.append("")
    (out / "table.md").write_text("\n".join(lines))
    _plots(summary, methods, budgets, out)


def _plots(summary: dict, methods: list[str], budgets: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, rows in summary.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for key, ax, title in [("score", axes[0], "accuracy"), ("prompt_tokens", axes[1], "prompt tokens"),
                               ("latency_s", axes[2], "latency (s)")]:
            for m in methods:
                ax.plot(budgets, [rows[f"{m}@{k}"][key] for k in budgets], marker="o", label=m)
            ax.axhline(rows["none"][key], color="black", linestyle="--", label="none (576)")
            ax.set_xlabel("budget K (visual tokens per image)")
            ax.set_title(f"{task}: {title}")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{task}_vs_budget.png", dpi=110)
        plt.close(fig)
