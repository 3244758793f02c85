"""TokenComp vs vanilla vLLM, same model, same server flags, same workload, in one run on one machine.

    tokencomp bench serve [--model DIR] [--scaled] [--requests 24] [--concurrency 4] [--methods id_pruner itg]
                          [--budgets 32 64 128 192] [--long-tokens 48] [--out bench/shipped]

Vanilla is the same server command with vLLM's plugin loading switched off (VLLM_PLUGINS="") and without
TokenComp's request middleware, so vLLM's own LLaVA serves it. Each setting answers the same generated requests twice: short answers (at most 8 tokens) and a
long-answer variant (`--long-tokens`, EOS ignored). Prefix caching is off so that repeating a workload costs
what it cost the first time. A cost model fitted on the same server gives the ideal speed-up at each budget:

    T(L) = t_vision + t_select + P(L) + t_decode, each the server time per request at the same concurrency,
    P = quadratic fit over prompt length of text-only prompts; ideal(K) = T_none / T_K;
    achieved(K) = throughput(K) / throughput(none), the same server with all 576 tokens (the table also gives
    every setting's ratio to vanilla vLLM)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tokencomp
from tokencomp.bench.load import drive, scene_requests
from tokencomp.bench.selection import measure
from tokencomp.bench.serve_report import write_report
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig

SHORT_TOKENS = 8
PREFILL_LENGTHS = (16, 96, 192, 320, 448, 576)
WORDS = ("red", "blue", "green", "circle", "square", "left", "above", "small")  # one token each in the shipped vocab


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="local model directory (default: shipped)")
    parser.add_argument("--scaled", action="store_true",
                        help="bench the scaled model instead: --model's tower + a 0.3 B random LLM, built on first use")
    parser.add_argument("--requests", type=int, default=24, help="requests per setting and variant")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["id_pruner", "itg"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--long-tokens", type=int, default=48, help="answer length of the long variant (0: skip it)")
    parser.add_argument("--out", type=Path, default=Path("bench/shipped"), help="folder for serve.md, serve.json, PNG")


def _validate(args: argparse.Namespace) -> None:
    for m in args.methods:
        tokencomp.methods.get(m)
    for name in ("requests", "concurrency"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if any(not 1 <= k <= 576 for k in args.budgets):
        raise ValueError(f"--budgets must be in [1, 576], got {args.budgets}")
    if args.long_tokens < 0:
        raise ValueError(f"--long-tokens must be >= 0, got {args.long_tokens}")
    if not args.model.is_dir():
        raise ValueError(f"--model must be a local model directory; {str(args.model)!r} is not one")


def _config(model: Path, *, vanilla: bool = False) -> ServerConfig:
    return ServerConfig(model=str(model), port=free_port(), max_images=1, extra=["--no-enable-prefix-caching"],
                        vanilla=vanilla)


def _variants(args) -> list[tuple[str, int, dict]]:
    out = [("short", SHORT_TOKENS, {})]
    if args.long_tokens:
        out.append(("long", args.long_tokens, {"ignore_eos": True}))
    return out


def _workloads(url: str, conversations, settings, args, bar) -> dict:
    results = {}
    for label, tc in settings:
        for variant, max_tokens, extra in _variants(args):
            body = extra | ({"mm_processor_kwargs": {"tokencomp": tc}} if tc else {})
            asyncio.run(drive(url, conversations[:2], concurrency=2, max_tokens=2, extra_body=body))  # warm-up
            results[f"{label}/{variant}"] = asyncio.run(drive(url, conversations, concurrency=args.concurrency,
                                                              max_tokens=max_tokens, extra_body=body))
            bar.update()
    return results


def _service_s(url: str, conversations, args, max_tokens: int, body: dict) -> tuple[float, float]:
    """(seconds of server time per request at the benchmark's concurrency = wall / requests, prompt tokens)."""
    result = asyncio.run(drive(url, conversations, concurrency=args.concurrency, max_tokens=max_tokens,
                               extra_body=body))
    return result["wall_s"] / result["requests"], result["prompt_tokens"]


def calibrate(url: str, conversations, args) -> dict:
    """The cost model's measurements, at the benchmark's concurrency: prefill service time of text-only prompts
    over their length, and of unpruned image requests answering one token."""
    points = []
    for length in PREFILL_LENGTHS:
        texts = [[{"role": "user", "content": " ".join(WORDS[(i + r) % len(WORDS)] for i in range(length))}]
                 for r in range(len(conversations))]
        seconds, tokens = _service_s(url, texts, args, 1, {})
        points.append((tokens, seconds))
    image_s, full = _service_s(url, conversations, args, 1, {"mm_processor_kwargs": {"tokencomp": {"method": "none"}}})
    return {"prefill_points": points, "image_one_token_s": image_s, "full_prompt_tokens": full}


def cost_model(calibration: dict, none_short_s: float, text_width: int, methods: list[str], budgets: list[int],
               prompt_at: dict) -> dict:
    """P(L) = quadratic fit of the text-only points; t_vision = image request (1 token) - P(L_full);
    t_decode = short-answer request - 1-token request; t_select timed in-process like `bench select`.
    ideal(K) = (t_vision + P(L_full) + t_decode) / (t_vision + t_select + P(L_K) + t_decode)."""
    lengths, times = zip(*calibration["prefill_points"])
    coef = np.polyfit(lengths, times, 2)
    prefill = lambda n: float(np.polyval(coef, n))
    t_full = calibration["image_one_token_s"]
    t_vision = max(0.0, t_full - prefill(calibration["full_prompt_tokens"]))
    t_decode = max(0.0, none_short_s - t_full)
    ideal, select = {}, {}
    for m in methods:
        for k in budgets:
            key = f"{m}@{k}"
            select[key] = measure(m, 576, text_width, k, repeats=3) / 1000
            ideal[key] = (t_full + t_decode) / (t_vision + select[key] + prefill(prompt_at[key]) + t_decode)
    return {"prefill_fit": [float(c) for c in coef[::-1]], "prefill_points": calibration["prefill_points"],
            "t_vision_s": t_vision, "t_decode_s": t_decode, "t_select_s": select, "ideal_speedup": ideal}


def bench_model(model: Path, args, bar) -> dict:
    conversations = scene_requests(args.requests)
    settings = [("none", {"method": "none"})] + [
        (f"{m}@{k}", {"method": m, "budget": k}) for m in args.methods for k in args.budgets]
    config = _config(model, vanilla=True)
    with running(config, log=args.out / "logs" / f"{model.name}-vanilla.log") as url:
        vanilla = _workloads(url, conversations, [("vanilla", None)], args, bar)
    config = _config(model)
    with running(config, log=args.out / "logs" / f"{model.name}-tokencomp.log") as url:
        runs = _workloads(url, conversations, settings, args, bar)
        calibration = calibrate(url, conversations, args)
    text_width = json.loads((model / "config.json").read_text())["text_config"]["hidden_size"]
    prompt_at = {label: runs[f"{label}/short"]["prompt_tokens"] for label, _ in settings}
    none_short_s = runs["none/short"]["wall_s"] / runs["none/short"]["requests"]
    costs = cost_model(calibration, none_short_s, text_width, args.methods, args.budgets, prompt_at)
    return {"runs": vanilla | runs, "cost_model": costs}


def run(args: argparse.Namespace) -> int:
    _validate(args)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    models = [args.model]
    if args.scaled:
        from tokencomp.bench.scaled_model import build_scaled

        models = [build_scaled(args.model, Path.home() / ".cache" / "tokencomp" / "scaled-llava-0.3b")]
    n_runs = len(models) * (2 + len(args.methods) * len(args.budgets)) * len(_variants(args))
    report = {}
    with tqdm(total=n_runs, desc="bench serve") as bar:
        for model in models:
            report[model.name] = bench_model(model, args, bar)
    (args.out / "serve.json").write_text(json.dumps(report, indent=1))
    print(write_report(report, args))
    return 0
