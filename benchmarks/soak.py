"""Soak: many concurrent clients for minutes, valid requests of every method and budget mixed with invalid ones
of every kind in `hostile.HOSTILE` (a request refused after its image was processed is followed at once by
its corrected retry, as a user would send it).

    tokencomp bench soak [--model DIR] [--clients 32] [--seconds 300] [--out bench]

Targets: no valid request fails, every invalid one is answered 4xx, the server never dies, the Prometheus
counters grow by exactly what was served, and its memory (server + engine processes) ends where it started
after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path

import openai
from tqdm import tqdm

import tokencomp
from tokencomp.benchmarks.hostile import HOSTILE
from tokencomp.benchmarks.load import MemoryWatch, scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig

BUDGETS = (1, 16, 32, 64, 128, 192, 576)
N_TOKENS = 576  # visual tokens per image of the shipped model (and of every LLaVA-1.5 at 336 px)
COUNTERS = ("tokencomp_images_total", "tokencomp_visual_tokens_in_total", "tokencomp_visual_tokens_out_total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--invalid-share", type=float, default=0.2, help="share of requests that are invalid")
    parser.add_argument("--processor-cache-gib", type=float, default=1.0,
                        help="the server's processed-image cache in shared memory (0: off)")
    parser.add_argument("--out", type=Path, default=Path("bench"))


async def _client(url: str, model: str, conversations, deadline: float, rng: random.Random, share: float,
                  counts: dict, bar) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    methods = tokencomp.methods.available()

    async def send(kind: str, messages: list[dict], kwargs: dict, tc: dict | None = None) -> None:
        try:
            await client.chat.completions.create(**({"model": model, "messages": messages, "max_tokens": 8,
                                                      "temperature": 0} | kwargs))
            counts[f"{kind} ok"] += 1
            if tc is not None:
                counts["served"][tc["method"]] = counts["served"].get(tc["method"], 0) + 1
                counts["served tokens out"] += min(tc.get("budget", N_TOKENS), N_TOKENS)
        except openai.APIStatusError as exc:
            counts[f"{kind} {'4xx' if 400 <= exc.status_code < 500 else 'other error'}"] += 1
            if kind == "valid" or exc.status_code >= 500:
                counts["examples"].append(f"{kind}: {exc.status_code} {str(exc.message)[:160]}")
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            counts[f"{kind} other error"] += 1
            counts["examples"].append(f"{kind}: {exc!r}"[:200])
        bar.update()

    while time.monotonic() < deadline:
        messages = rng.choice(conversations)
        method = rng.choice(methods)
        tc = {"method": method} | ({} if method == "none" else {"budget": rng.choice(BUDGETS)})
        valid = {"extra_body": {"mm_processor_kwargs": {"tokencomp": tc}}}
        if rng.random() < share:
            hostile = rng.choice(HOSTILE)
            await send("invalid", *hostile.make(messages, tc))
            counts["invalid kinds"][hostile.name] = counts["invalid kinds"].get(hostile.name, 0) + 1
            if not hostile.after_processing:
                continue
        await send("valid", messages, valid, tc)  # after a late refusal: the user's corrected retry
    await client.close()


def read_counters(url: str) -> dict[str, float]:
    """Sum over methods of each TokenComp counter on the server's /metrics."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        text = response.read().decode()
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


async def soak(url: str, args: argparse.Namespace) -> dict:
    conversations = scene_requests(16)
    client = openai.AsyncOpenAI(base_url=url, api_key="none")
    model = (await client.models.list()).data[0].id
    for messages in conversations[:4]:  # warm-up, so the start figure is the served steady state
        await client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    await client.close()
    before = read_counters(url)
    counts = {f"{k} {r}": 0 for k in ("valid", "invalid") for r in ("ok", "4xx", "other error")}
    counts |= {"examples": [], "invalid kinds": {}, "served": {}, "served tokens out": 0}
    deadline = time.monotonic() + args.seconds
    memory: list[tuple[float, float]] = []  # (seconds into the run, MiB)

    async def sample() -> None:
        begin = time.monotonic()
        while time.monotonic() < deadline:
            memory.append((time.monotonic() - begin, MemoryWatch.now()))
            await asyncio.sleep(max(0.5, args.seconds / 100))

    with tqdm(desc="soak requests") as bar:
        await asyncio.gather(sample(), *(_client(url, model, conversations, deadline, random.Random(i),
                                                 args.invalid_share, counts, bar) for i in range(args.clients)))
    # every method's first requests allocate their working memory: "start" is taken after a fifth of the run
    settled = next((mib for t, mib in memory if t >= args.seconds / 5), MemoryWatch.now())
    after = read_counters(url)
    counted = {name: after[name] - before[name] for name in COUNTERS}
    return counts | {"counted": counted, "memory_start_mib": settled, "memory_end_mib": MemoryWatch.now(),
                     "memory_trace": memory}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.seconds <= 0 or not 0 <= args.invalid_share <= 1:
        raise ValueError("--clients must be >= 1, --seconds > 0 and --invalid-share in [0, 1]")
    if args.processor_cache_gib < 0:
        raise ValueError(f"--processor-cache-gib must be >= 0, got {args.processor_cache_gib}")
    if not args.model.is_dir():
        raise ValueError(f"--model must be a local model directory; {str(args.model)!r} is not one")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    config = ServerConfig(model=str(args.model), port=free_port(), max_images=1,
                          processor_cache_gib=args.processor_cache_gib)
    with running(config, log=args.out / "logs" / "soak-server.log") as url:
        result = asyncio.run(soak(url, args))
        server_alive = _healthy(url)
    result |= {"clients": args.clients, "seconds": args.seconds, "server_alive_at_end": server_alive}
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    served = result["valid ok"] + result["valid 4xx"] + result["valid other error"]
    invalid = result["invalid ok"] + result["invalid 4xx"] + result["invalid other error"]
    cache = "" if args.processor_cache_gib == 1 else f" --processor-cache-gib {args.processor_cache_gib:g}"
    intro = (f"`tokencomp bench soak --clients {args.clients} --seconds {args.seconds:g}{cache}`: valid requests of "
             f"every method and budget mixed with {100 * args.invalid_share:.0f} % invalid ones of "
             f"{len(HOSTILE)} kinds; each refused after its image was processed is followed by its corrected retry.")
    served_images = sum(result["served"].values())
    counted = result["counted"]
    kinds = ", ".join(f"{name} {n}" for name, n in sorted(result["invalid kinds"].items()))
    text = "\n".join([
        "# Soak", "", intro, "",
        "| figure | value | target |", "|---|---:|---|",
        f"| valid requests served | {result['valid ok']} of {served} | all |",
        f"| valid requests failed | {served - result['valid ok']} | 0 |",
        f"| invalid requests answered 4xx | {result['invalid 4xx']} of {invalid} | all |",
        f"| server alive at the end | {'yes' if server_alive else 'no'} | yes |",
        (f"| images / visual tokens out counted on /metrics | {counted['tokencomp_images_total']:.0f} / "
         f"{counted['tokencomp_visual_tokens_out_total']:.0f} | {served_images} / {result['served tokens out']} "
         f"(served) |"),
        (f"| server memory after 1/5 of the run → end (MiB) | {result['memory_start_mib']:.0f} → "
         f"{result['memory_end_mib']:.0f} | flat |"),
        "", f"Invalid requests sent, by kind: {kinds}.", "",
        *(f"- {e}" for e in result["examples"][:10]), ""])
    (args.out / "soak.md").write_text(text)
    print(text)
    return 0
