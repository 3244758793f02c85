"""Drive a server with chat requests at bounded concurrency and measure them: streaming, so time to first
token (TTFT) is seen; server memory is sampled while the load runs. Shared by `bench serve` and `bench soak`."""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Self

import openai
import psutil

from tokencomp.training import scenes


def scene_requests(n: int) -> list[list[dict]]:
    """n one-image chat conversations: distinct generated test scenes, each with its first question."""
    out = []
    for i in range(n):
        scene = scenes.make_scene("test", i)
        buf = io.BytesIO()
        scenes.render(scene).save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": scene.questions[0]["question"]}]}])
    return out


@dataclass
class Timing:
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    completion_tokens: int


async def stream_one(client: openai.AsyncOpenAI, model: str, messages: list[dict], max_tokens: int,
                     extra_body: dict) -> Timing:
    start = time.perf_counter()
    first, usage = None, None
    stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                  temperature=0, stream=True, stream_options={"include_usage": True},
                                                  extra_body=extra_body)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    return Timing((first or end) - start, end - start, usage.prompt_tokens if usage else 0,
                  usage.completion_tokens if usage else 0)


class MemoryWatch:
    """Peak and last resident memory (MiB) of this process's children (the server and its engine), polled."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.peak, self.last = every_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def now() -> float:
        total = 0
        for p in psutil.Process().children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.last = self.now()
            self.peak = max(self.peak, self.last)
            self._stop.wait(self.every_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def drive(url: str, conversations: list[list[dict]], *, concurrency: int, max_tokens: int,
                extra_body: dict) -> dict:
    """Send every conversation once (at most `concurrency` in flight); throughput and latency figures."""
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    gate = asyncio.Semaphore(concurrency)

    async def one(messages):
        async with gate:
            return await stream_one(client, model, messages, max_tokens, extra_body)

    with MemoryWatch() as memory:
        start = time.perf_counter()
        timings = await asyncio.gather(*(one(m) for m in conversations))
        wall = time.perf_counter() - start
    await client.close()
    ttft, e2e = [t.ttft_s for t in timings], [t.e2e_s for t in timings]
    return {"requests": len(timings), "wall_s": wall, "throughput_rps": len(timings) / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p90_s": percentile(ttft, 90),
            "e2e_p50_s": statistics.median(e2e), "e2e_p90_s": percentile(e2e, 90), "e2e_p99_s": percentile(e2e, 99),
            "prompt_tokens": statistics.mean(t.prompt_tokens for t in timings),
            "completion_tokens": statistics.mean(t.completion_tokens for t in timings),
            "peak_memory_mib": memory.peak}
