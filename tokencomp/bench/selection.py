"""Selection latency of every method: median over repeats, per token count N, width D and budget K.

    tokencomp bench select [--n 576 2880] [--d 1024 4096] [--k 32 64 128 192] [--repeats 5] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import tokencomp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, nargs="+", default=[576, 2880], help="visual tokens per image")
    parser.add_argument("--d", type=int, nargs="+", default=[1024, 4096], help="token width")
    parser.add_argument("--k", type=int, nargs="+", default=[32, 64, 128, 192], help="budgets")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method but none")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")


def _inputs(n: int, d: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    side = int(n**0.5)
    grid = (side, n // side) if side * (n // side) == n else (1, n)
    signals = {
        "cls_attn": torch.rand(n, generator=g).softmax(0),
        "text": torch.randn(16, d, generator=g),
        "keys": torch.randn(n, 64, generator=g),
        "grid": grid,
    }
    return torch.randn(n, d, generator=g), signals


def measure(method: str, n: int, d: int, k: int, repeats: int) -> float:
    """Median wall time of one `compress` call, milliseconds."""
    tokens, signals = _inputs(n, d)
    tokencomp.compress(tokens, k, method, **signals)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokencomp.compress(tokens, k, method, **signals)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(args: argparse.Namespace) -> int:
    methods = args.methods or [m for m in tokencomp.methods.available() if m != "none"]
    for m in methods:
        tokencomp.methods.get(m)  # unknown names fail before any timing
    if args.repeats < 1 or min(args.n + args.d + args.k) < 1:
        raise ValueError("--n, --d, --k and --repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    points = list(itertools.product(args.n, args.d))
    results: dict[tuple, float] = {}
    for (n, d), method, k in tqdm(list(itertools.product(points, methods, args.k)), desc="bench select"):
        results[(n, d, method, k)] = measure(method, n, d, k, args.repeats)
    header = (
        f"Selection latency, median of {args.repeats} runs, ms per image "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores, float32)"
    )
    lines = [header, ""]
    for n, d in points:
        lines += [f"N = {n}, D = {d}", "", "| method | " + " | ".join(f"K={k}" for k in args.k) + " |",
                  "|---|" + "---:|" * len(args.k)]
        lines += [f"| {m} | " + " | ".join(f"{results[(n, d, m, k)]:.1f}" for k in args.k) + " |" for m in methods]
        lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0
