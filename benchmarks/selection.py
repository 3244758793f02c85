"""Selection latency of every method beside the floor of similarity-based selection, on a chosen device.

    tokencomp bench select [--device cpu|cuda] [--n 576 2880] [--d 4096] [--k 64] [--repeats 7] [--out FILE.md]

The floor is one float32 N x N cosine matrix of the tokens at their width D: any method that compares tokens
pays it once. Each method's time is reported as median and spread (min-max over repeats) and as a ratio to the
floor's median measured in the same run. VisPruner compares patches at the vision tower's width (`features`,
Dv = 1024 for CLIP ViT-L), as its released code does, so its similarity costs a quarter of the floor at D = 4096.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import tokencomp
from tokencomp.base import cosine_matrix

VISION_WIDTH = 1024  # CLIP ViT-L/14's width: the pre-projector features LLaVA-1.5 has


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device the tokens live on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--n", type=int, nargs="+", default=[576, 2880], help="visual tokens per image")
    parser.add_argument("--d", type=int, nargs="+", default=[4096], help="token width")
    parser.add_argument("--k", type=int, nargs="+", default=[64], help="budgets")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method but none")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per point (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")


def _inputs(n: int, d: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    side = int(n**0.5)
    grid = (side, n // side) if side * (n // side) == n else (1, n)
    signals = {
        "cls_attn": torch.rand(n, generator=g).softmax(0).to(device),
        "text": torch.randn(16, d, generator=g).to(device),
        "keys": torch.randn(n, 64, generator=g).to(device),
        "features": torch.randn(n, VISION_WIDTH, generator=g).to(device),
        "grid": grid,
    }
    return torch.randn(n, d, generator=g).to(device), signals


def timed(repeats: int, device: torch.device, fn: Callable[..., object], *args, **kwargs) -> list[float]:
    """Wall times of `repeats` calls fn(*args, **kwargs) after one warm-up, milliseconds; the device is
    synchronised around each."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(*args, **kwargs)
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return times


def _cell(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}–{max(times):.3f})"


def run(args: argparse.Namespace) -> int:
    methods = args.methods or [m for m in tokencomp.methods.available() if m != "none"]
    for m in methods:
        tokencomp.methods.get(m)  # unknown names fail before any timing
    if args.repeats < 1 or min(args.n + args.d + args.k) < 1:
        raise ValueError("--n, --d, --k and --repeats must be positive")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    points = list(itertools.product(args.n, args.d))
    floors: dict[tuple, list[float]] = {}
    results: dict[tuple, list[float]] = {}
    for (n, d), method in tqdm(list(itertools.product(points, [None, *methods])), desc="bench select"):
        tokens, signals = _inputs(n, d, device)
        if method is None:
            floors[(n, d)] = timed(args.repeats, device, cosine_matrix, tokens)
            continue
        for k in args.k:
            results[(n, d, method, k)] = timed(args.repeats, device, tokencomp.compress, tokens, k, method,
                                               **signals)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                     f"{os.cpu_count()} cores")
    title = (f"Selection latency per image on {device.type} ({hardware}), float32 tokens: median (min–max) of "
             f"{args.repeats} runs after a warm-up, ms; × floor = median / the floor's median, same run.")
    lines = [title, ""]
    for n, d in points:
        floor = statistics.median(floors[(n, d)])
        lines += [f"N = {n}, D = {d}: floor (one float32 N×N cosine matrix at D) = {_cell(floors[(n, d)])} ms", "",
                  "| method | " + " | ".join(f"K={k} ms | K={k} × floor" for k in args.k) + " |",
                  "|---|" + "---:|---:|" * len(args.k)]
        for m in methods:
            cells = [f"{_cell(results[(n, d, m, k)])} | {statistics.median(results[(n, d, m, k)]) / floor:.2f}"
                     for k in args.k]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0
