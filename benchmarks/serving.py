"""TokenComp vs vanilla vLLM, same model, same server flags, same workload, interleaved in rounds on one machine.

    tokencomp bench serve [--model DIR] [--scaled] [--rounds 5] [--requests 16] [--concurrency 4]
                          [--methods id_pruner itg] [--budgets 32 64 128 192] [--long-tokens 48] [--out DIR]

Two servers run side by side: vanilla (vLLM's plugin loading off, no TokenComp middleware, so vLLM's own LLaVA
serves) and `tokencomp serve`. Every round runs every setting once — vanilla, `none`, and at each budget K the
oracle `first@K` (the first K tokens: the same engine at the same K with a zero-cost selection) and each method
— in an order rotated by one setting per round, so slow drift of the machine falls on every setting alike.
Each setting answers the same generated requests: short answers, and a long variant (`--long-tokens`, EOS
ignored). Prefix caching is off so that repeating a workload costs what it cost the first time.

Figures per setting are ratios within a round (to vanilla, and for methods to the oracle at the same K), then
the median over rounds and a 95 % interval (t interval on the log ratios, so it is multiplicative). Sanity
row: `none` vs vanilla is the same work, so its interval should sit within ±2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from tqdm import tqdm

import tokencomp
from tokencomp.benchmarks.load import drive, scene_requests
from tokencomp.benchmarks.serve_report import write_report
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig

SHORT_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="local model directory (default: shipped)")
    parser.add_argument("--scaled", action="store_true",
                        help="bench the scaled model instead: --model's tower + a 0.3 B random LLM, built on first use")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; every setting runs once per round")
    parser.add_argument("--requests", type=int, default=16, help="requests per setting, variant and round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["id_pruner", "itg"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--long-tokens", type=int, default=48, help="answer length of the long variant (0: skip it)")
    parser.add_argument("--out", type=Path, default=Path("bench/shipped"), help="folder for serve.md, serve.json, PNG")


def _validate(args: argparse.Namespace) -> None:
    for m in args.methods:
        tokencomp.methods.get(m)
    for name in ("rounds", "requests", "concurrency"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.rounds < 2:
        raise ValueError(f"--rounds must be at least 2 (an interval needs a spread), got {args.rounds}")
    if any(not 1 <= k <= 576 for k in args.budgets):
        raise ValueError(f"--budgets must be in [1, 576], got {args.budgets}")
    if args.long_tokens < 0:
        raise ValueError(f"--long-tokens must be >= 0, got {args.long_tokens}")
    if not args.model.is_dir():
        raise ValueError(f"--model must be a local model directory; {str(args.model)!r} is not one")


def settings(methods: list[str], budgets: list[int]) -> list[tuple[str, dict | None]]:
    """(label, tokencomp spec or None for vanilla) in the order of the first round."""
    out: list[tuple[str, dict | None]] = [("vanilla", None), ("none", {"method": "none"})]
    for k in budgets:
        out += [(f"{m}@{k}", {"method": m, "budget": k}) for m in ("first", *methods)]
    return out


def variants(long_tokens: int) -> list[tuple[str, int, dict]]:
    out = [("short", SHORT_TOKENS, {})]
    if long_tokens:
        out.append(("long", long_tokens, {"ignore_eos": True}))
    return out


def rotated(items: list, round_index: int) -> list:
    shift = round_index % len(items)
    return items[shift:] + items[:shift]


def _config(model: Path, *, vanilla: bool) -> ServerConfig:
    return ServerConfig(model=str(model), port=free_port(), max_images=1, extra=["--no-enable-prefix-caching"],
                        vanilla=vanilla)


def bench_model(model: Path, args, bar) -> dict:
    conversations = scene_requests(args.requests)
    plan = settings(args.methods, args.budgets)
    runs: dict[str, list[dict]] = {}
    logs = args.out / "logs"
    with running(_config(model, vanilla=True), log=logs / f"{model.name}-vanilla.log") as vanilla_url, \
            running(_config(model, vanilla=False), log=logs / f"{model.name}-tokencomp.log") as tokencomp_url:
        def workload(tc: dict | None, max_tokens: int, extra: dict, batch) -> dict:
            url = vanilla_url if tc is None else tokencomp_url
            body = extra | ({"mm_processor_kwargs": {"tokencomp": tc}} if tc else {})
            return asyncio.run(drive(url, batch, concurrency=args.concurrency, max_tokens=max_tokens,
                                     extra_body=body))

        for _, tc in plan:  # warm-up: each setting's first requests allocate its working memory
            workload(tc, 2, {}, conversations[:2])
        for r in range(args.rounds):
            for label, tc in rotated(plan, r):
                for variant, max_tokens, extra in variants(args.long_tokens):
                    runs.setdefault(f"{label}/{variant}", []).append(workload(tc, max_tokens, extra, conversations))
                    bar.update()
    return {"runs": runs}


def run(args: argparse.Namespace) -> int:
    _validate(args)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    models = [args.model]
    if args.scaled:
        from tokencomp.benchmarks.scaled_model import build_scaled

        models = [build_scaled(args.model, Path.home() / ".cache" / "tokencomp" / "scaled-llava-0.3b")]
    total = len(models) * args.rounds * len(settings(args.methods, args.budgets)) * len(variants(args.long_tokens))
    report = {}
    with tqdm(total=total, desc="bench serve (setting x variant x round)") as bar:
        for model in models:
            report[model.name] = bench_model(model, args, bar)
    text = write_report(report, args)  # adds each model's summary to the report
    (args.out / "serve.json").write_text(json.dumps(report, indent=1))
    print(text)
    return 0
