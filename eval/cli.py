"""`tokencomp eval`: sweep methods x budgets over tasks against an endpoint (or a model served for the run).

Writes per-sample logs (resumable, keyed by model, task and setting), `results.json` shaped like lmms-eval's
(`results` -> task -> "metric,none" and "metric_stderr,none"), `table.md` with scores, their 95 % intervals, % of
the unpruned model, paired tests of ours against the best peer and per-family tables, and PNG plots of score,
prompt tokens and latency against the budget. `--from-logs` rewrites the tables from the logs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import tokencomp
from tokencomp.eval import tasks
from tokencomp.eval.cluster_bootstrap import REPLICATES
from tokencomp.eval.fingerprint import model_identity
from tokencomp.eval.report import TaskRun, write_results
from tokencomp.eval.runner import Log, Setting, logged, pending, run_endpoint, served_model

BASELINES = ("random", "pool")  # several studies found them strong: a method must beat them to show anything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["synthetic"], help=f"tasks: {', '.join(tasks.TASKS)}")
    parser.add_argument("--split", default=None,
                        help=f"held-out split of {', '.join(tasks.with_splits())}: val (tune on it) or test "
                             "(the default; report each final configuration once)")
    parser.add_argument("--methods", nargs="+", default=["id_pruner", "itg"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--question-aware", action="store_true",
                        help="mix the question's relevance into methods that can (id_pruner, itg, mmr)")
    parser.add_argument("--seed", type=int, default=0, help="seed of methods that draw at random (random)")
    parser.add_argument("--options", nargs="+", default=[], metavar="METHOD.NAME=VALUE",
                        help="a method's own option, e.g. itg.tau=0.1 (values read as JSON, else as text)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--endpoint", help="an OpenAI-compatible server (…/v1) with the tokencomp plugin")
    target.add_argument("--model", help="a local model directory: served by `tokencomp serve` for this run")
    parser.add_argument("--in-process", action="store_true",
                        help="with --model: run vLLM's offline engine in this process instead of a server")
    parser.add_argument("--from-logs", action="store_true",
                        help="ask nothing: rewrite results and tables from the logs in --out (of --model, or of "
                             "the one model they hold)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--data-dir", type=Path, default=None, help="local copy of the task's data")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=REPLICATES, help="bootstrap replicates")
    parser.add_argument("--no-baselines", action="store_true", help=f"do not add {' and '.join(BASELINES)}")
    parser.add_argument("--out", type=Path, required=True, help="results folder (re-running resumes)")
    parser.add_argument("--label-map", type=Path, default=None, metavar="FILE",
                        help="score each answer as the target label it maps to (tokencomp train visual-prompt)")


def parse_options(items: list[str]) -> dict[str, dict[str, object]]:
    """`["itg.tau=0.1"]` -> {"itg": {"tau": 0.1}}; values are JSON where they parse, text otherwise."""
    options: dict[str, dict[str, object]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        method, dot, option = name.partition(".")
        if not (sep and dot and method and option):
            raise ValueError(f"--options takes METHOD.NAME=VALUE (e.g. itg.tau=0.1); got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(method, {})[option] = value
    return options


def settings(methods: list[str], budgets: list[int], baselines: bool, *, question_aware: bool = False,
             seed: int = 0, options: dict[str, dict[str, object]] | None = None) -> list[Setting]:
    """The sweep: `none` once, then every method (baselines added) at every budget. `question_aware` and
    `seed` go only to the methods they change; each method's options are checked as a served request would be."""
    from tokencomp.serving import spec

    for m in methods:
        tokencomp.methods.get(m)
    if any(b < 1 for b in budgets):
        raise ValueError(f"--budgets must be positive integers, got {budgets}")
    options = options or {}
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"--options name method(s) {stray} that are not in --methods {methods}")
    chosen = [m for m in methods if m != "none"]
    if baselines:
        added = [b for b in BASELINES if b not in chosen]
        if added:
            print(f"tokencomp eval: adding baselines {', '.join(added)} (--no-baselines to skip)")
        chosen += added
    sweep = [Setting("none", None)]
    for m in chosen:
        uses = tokencomp.methods.get(m).uses
        checked = spec.parse({"method": m, "budget": min(budgets), "options": options.get(m, {})},
                             max_budget=max(budgets)).options
        extras = {"question_aware": question_aware and {"text", "cls_attn"} <= set(uses),
                  "seed": seed if "seed" in uses else 0, "options": tuple(sorted(checked.items()))}
        sweep += [Setting(m, k, **extras) for k in budgets]
    return sweep


def _model_dir(args: argparse.Namespace) -> str:
    from tokencomp.serving.server import DEFAULT_MODEL

    model = args.model or str(DEFAULT_MODEL)
    if not Path(model).is_dir():
        raise ValueError(f"--model must be a local model directory; {model!r} is not one")
    return model


def _logged_model(out: Path, labels: list[str]) -> str:
    """The one model whose logs `out` holds for these tasks (for --from-logs without --model)."""
    found = {json.loads(p.read_text())["model"] for label in labels for p in (out / label).glob("*.key.json")}
    if len(found) != 1:
        held = ", ".join(sorted(found)) or "none"
        raise ValueError(f"--from-logs without --model needs the logs of exactly one model in {out}; found: {held}")
    return found.pop()


def _from_logs(task, samples, setting: Setting, log: Log) -> list[dict]:
    missing = len(pending(samples, log))
    if missing:
        raise ValueError(f"--from-logs: {missing} of {len(samples)} samples of {task.name} {setting.label} have no "
                         f"answer in {log.path}; run without --from-logs to ask them")
    return logged(samples, log)


@contextlib.contextmanager
def _runner(args: argparse.Namespace, out: Path, labels: list[str]):
    """(model identity, a function (task, samples, setting, log) -> records): the logs alone, the offline engine,
    the given endpoint, or a server started for this run."""
    if args.from_logs:
        if args.endpoint or args.in_process:
            raise ValueError("--from-logs asks nothing; pass --model DIR to choose a model's logs, not --endpoint "
                             "or --in-process")
        yield (model_identity(_model_dir(args)) if args.model else _logged_model(out, labels)), _from_logs
        return
    if args.in_process:
        if args.endpoint:
            raise ValueError("--in-process runs a local --model; it cannot be used with --endpoint")
        from tokencomp.eval.offline import OfflineEngine

        model = _model_dir(args)
        yield model_identity(model), OfflineEngine(model).run
        return

    def ask(endpoint: str):
        return lambda task, samples, setting, log: asyncio.run(run_endpoint(
            endpoint, task, samples, setting, log, concurrency=args.concurrency, api_key=args.api_key))

    if args.endpoint:
        yield model_identity(served_model(args.endpoint, args.api_key)), ask(args.endpoint)
        return
    from tokencomp.serving.launcher import free_port, running
    from tokencomp.serving.server import ServerConfig

    model = _model_dir(args)
    with running(ServerConfig(model=model, port=free_port()), log=out / "server.log") as url:
        yield model_identity(model), ask(url)


def run(args: argparse.Namespace) -> int:
    chosen = [tasks.get(name) for name in args.tasks]
    sweep = settings(args.methods, args.budgets, not args.no_baselines, question_aware=args.question_aware,
                     seed=args.seed, options=parse_options(args.options))
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir} does not exist")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    if args.replicates < 100:
        raise ValueError(f"--replicates must be at least 100 for a 95 % interval, got {args.replicates}")
    samples = {t.name: tasks.load(t, args.data_dir, args.limit, args.split) for t in chosen}
    labels = {t.name: tasks.label(t, args.split) for t in chosen}
    if args.label_map is not None:
        from tokencomp.training.label_mapping import load_label_map, mapped_scorer

        label_map = load_label_map(args.label_map)
        chosen = [dataclasses.replace(t, score=mapped_scorer(t.score, label_map)) for t in chosen]
        # mapped scores are logged apart from plain ones: the map's digest is part of the task label
        digest = hashlib.sha256(args.label_map.read_bytes()).hexdigest()[:8]
        labels = {name: f"{label}_map-{digest}" for name, label in labels.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with _runner(args, args.out, list(labels.values())) as (model, answer):
        for task in chosen:
            label = labels[task.name]
            records = {s: answer(task, samples[task.name], s, Log.of(args.out, model, label, task, s)) for s in sweep}
            runs.append(TaskRun(label, task, records))
    write_results(runs, args.budgets, args.out, args.replicates)
    print((args.out / "table.md").read_text())
    return 0
