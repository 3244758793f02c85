"""Soak: many concurrent clients for minutes, valid requests of every method and budget mixed with invalid ones.

    tokencomp bench soak [--model DIR] [--clients 32] [--seconds 300] [--out bench]

Targets: no valid request fails, every invalid one is answered 4xx, the server never dies, and its memory
(server + engine processes) ends where it started after warm-up.
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
from tokencomp.bench.load import MemoryWatch, scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig

BUDGETS = (1, 16, 32, 64, 128, 192, 576)
# (what is wrong, request body extras): each must be refused with a 4xx
INVALID = [
    ("unknown method", {"mm_processor_kwargs": {"tokencomp": {"method": "nope", "budget": 64}}}),
    ("budget 0", {"mm_processor_kwargs": {"tokencomp": {"method": "itg", "budget": 0}}}),
    ("budget as a string", {"mm_processor_kwargs": {"tokencomp": {"method": "id_pruner", "budget": "64"}}}),
    ("budget too large", {"mm_processor_kwargs": {"tokencomp": {"method": "pool", "budget": 10**9}}}),
    ("unknown processor kwarg", {"mm_processor_kwargs": {"size": 3}}),
]
BAD_IMAGE = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"  # a truncated PNG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--invalid-share", type=float, default=0.2, help="share of requests that are invalid")
    parser.add_argument("--processor-cache-gib", type=float, default=None,
                        help="vLLM's multimodal processor cache per process (default: vLLM's, 4 GiB); it fills as "
                        "distinct image x method x budget inputs arrive, which shows as memory growth until full")
    parser.add_argument("--out", type=Path, default=Path("bench"))


async def _client(url: str, model: str, conversations, deadline: float, rng: random.Random, share: float,
                  counts: dict, bar) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    methods = tokencomp.methods.available()
    while time.monotonic() < deadline:
        messages = rng.choice(conversations)
        if rng.random() < share:
            kind = "invalid"
            if rng.random() < 1 / (len(INVALID) + 1):
                messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BAD_IMAGE}},
                                                         {"type": "text", "text": "What is this?"}]}]
                body = {}
            else:
                body = rng.choice(INVALID)[1]
        else:
            kind = "valid"
            method = rng.choice(methods)
            tc = {"method": method} | ({} if method == "none" else {"budget": rng.choice(BUDGETS)})
            body = {"mm_processor_kwargs": {"tokencomp": tc}}
        try:
            await client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                                 extra_body=body)
            counts[f"{kind} ok"] += 1
        except openai.APIStatusError as exc:
            counts[f"{kind} {'4xx' if 400 <= exc.status_code < 500 else 'other error'}"] += 1
            if kind == "valid" or exc.status_code >= 500:
                counts["examples"].append(f"{kind}: {exc.status_code} {str(exc.message)[:160]}")
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            counts[f"{kind} other error"] += 1
            counts["examples"].append(f"{kind}: {exc!r}"[:200])
        bar.update()
    await client.close()


async def soak(url: str, args: argparse.Namespace) -> dict:
    conversations = scene_requests(16)
    client = openai.AsyncOpenAI(base_url=url, api_key="none")
    model = (await client.models.list()).data[0].id
    for messages in conversations[:4]:  # warm-up, so the start figure is the served steady state
        await client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    await client.close()
    counts = {f"{k} {r}": 0 for k in ("valid", "invalid") for r in ("ok", "4xx", "other error")} | {"examples": []}
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
    return counts | {"memory_start_mib": settled, "memory_end_mib": MemoryWatch.now(), "memory_trace": memory}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.seconds <= 0 or not 0 <= args.invalid_share <= 1:
        raise ValueError("--clients must be >= 1, --seconds > 0 and --invalid-share in [0, 1]")
    if args.processor_cache_gib is not None and args.processor_cache_gib < 0:
        raise ValueError(f"--processor-cache-gib must be >= 0, got {args.processor_cache_gib}")
    if not args.model.is_dir():
        raise ValueError(f"--model must be a local model directory; {str(args.model)!r} is not one")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    extra = [] if args.processor_cache_gib is None else ["--mm-processor-cache-gb", f"{args.processor_cache_gib:g}"]
    config = ServerConfig(model=str(args.model), port=free_port(), max_images=1, extra=extra)
    with running(config, log=args.out / "logs" / "soak-server.log") as url:
        result = asyncio.run(soak(url, args))
        server_alive = _healthy(url)
    result |= {"clients": args.clients, "seconds": args.seconds, "server_alive_at_end": server_alive}
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    served = result["valid ok"] + result["valid 4xx"] + result["valid other error"]
    invalid = result["invalid ok"] + result["invalid 4xx"] + result["invalid other error"]
    cache = "" if args.processor_cache_gib is None else f" --processor-cache-gib {args.processor_cache_gib:g}"
    intro = (f"`tokencomp bench soak --clients {args.clients} --seconds {args.seconds:g}{cache}`: valid requests of every "
             f"method and budget mixed with {100 * args.invalid_share:.0f} % invalid ones (bad method, budget 0 / "
             "string / too large, unknown processor kwarg, truncated image).")
    text = "\n".join([
        "# Soak", "", intro, "",
        "| figure | value | target |", "|---|---:|---|",
        f"| valid requests served | {result['valid ok']} of {served} | all |",
        f"| valid requests failed | {served - result['valid ok']} | 0 |",
        f"| invalid requests answered 4xx | {result['invalid 4xx']} of {invalid} | all |",
        f"| server alive at the end | {'yes' if server_alive else 'no'} | yes |",
        (f"| server memory after 1/5 of the run → end (MiB) | {result['memory_start_mib']:.0f} → "
         f"{result['memory_end_mib']:.0f} | flat |"),
        "", *(f"- {e}" for e in result["examples"][:10]), ""])
    (args.out / "soak.md").write_text(text)
    print(text)
    return 0
