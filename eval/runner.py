"""Run a task against any OpenAI-compatible endpoint: bounded concurrency, retries with backoff, one JSONL line
per finished sample. A killed run resumes from its log without asking again; a request that still fails after
its retries is recorded as failed, and counted apart from wrong answers."""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

import openai
from tqdm import tqdm

from tokencomp.eval.metrics import mean
from tokencomp.eval.sample import Sample, Task


@dataclass(frozen=True)
class Setting:
    method: str
    budget: int | None  # None for method "none"

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method}@{self.budget}"

    def body(self) -> dict:
        tc = {"method": self.method} | ({"budget": self.budget} if self.budget is not None else {})
        return {"mm_processor_kwargs": {"tokencomp": tc}}


def chat_messages(sample: Sample) -> list[dict]:
    """One user turn: the image (as a data URL of the file's own bytes), then the prompt text."""
    mime = mimetypes.guess_type(sample.image.name)[0] or "image/png"
    url = f"data:{mime};base64," + base64.b64encode(sample.image.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": sample.question}]}]


def load_log(log: Path) -> list[dict]:
    """The complete records of a previous run, rewriting the file without a line a kill cut short (that sample
    runs again; appending after a cut line would corrupt the next record too)."""
    if not log.is_file():
        return []
    records, lines = [], []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
            lines.append(line)
        except json.JSONDecodeError:
            continue
    log.write_text("".join(f"{line}\n" for line in lines))
    return records


async def _ask(client: openai.AsyncOpenAI, model: str, task: Task, sample: Sample, setting: Setting,
               retries: int) -> dict:
    messages = chat_messages(sample)
    error = None
    for attempt in range(retries + 1):
        start = time.perf_counter()
        try:
            reply = await client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                         max_tokens=task.max_tokens, extra_body=setting.body())
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as exc:  # transient: try again after a backoff
            error = repr(exc)
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
            continue
        except openai.APIStatusError as exc:  # the request itself is wrong: retrying cannot help
            error = f"{exc.status_code}: {exc.message}"
            break
        return answered(task, sample, reply.choices[0].message.content or "", reply.usage.prompt_tokens,
                        time.perf_counter() - start)
    return _base(sample) | {"status": "failed", "error": error}


def _base(sample: Sample) -> dict:
    return {"id": sample.id, "question": sample.question, "answers": list(sample.answers), "group": sample.group,
            "meta": sample.meta}


def answered(task: Task, sample: Sample, prediction: str, prompt_tokens: int, latency_s: float) -> dict:
    """The log record of an answered sample."""
    return _base(sample) | {"status": "ok", "prediction": prediction, "score": task.score(prediction, sample),
                            "prompt_tokens": prompt_tokens, "latency_s": round(latency_s, 4)}


async def run_endpoint(endpoint: str, task: Task, samples: list[Sample], setting: Setting, log: Path, *,
                       concurrency: int = 4, retries: int = 3, api_key: str = "none") -> list[dict]:
    """Answer every sample not yet in `log`, appending each result as it finishes; return all of the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    client = openai.AsyncOpenAI(base_url=endpoint, api_key=api_key, max_retries=0, timeout=300)
    model = (await client.models.list()).data[0].id
    todo = pending(samples, log)
    gate = asyncio.Semaphore(concurrency)
    with open(log, "a") as out, progress(task, setting, samples, todo) as bar:  # noqa: ASYNC230 - local log

        async def one(sample: Sample) -> None:
            async with gate:
                record = await _ask(client, model, task, sample, setting, retries)
            out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update()

        await asyncio.gather(*(one(s) for s in todo))
    await client.close()
    return logged(samples, log)


def pending(samples: list[Sample], log: Path) -> list[Sample]:
    """The samples without a complete record in `log` (what a resumed run still has to ask)."""
    finished = {r["id"] for r in load_log(log)}
    return [s for s in samples if s.id not in finished]


def logged(samples: list[Sample], log: Path) -> list[dict]:
    """The records `log` holds for `samples`."""
    wanted = {s.id for s in samples}
    return [r for r in load_log(log) if r["id"] in wanted]


def progress(task: Task, setting: Setting, samples: list[Sample], todo: list[Sample]) -> tqdm:
    return tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{task.name} {setting.label}")


def summarise(task: Task, records: list[dict]) -> dict:
    """The task's aggregate over answered samples (headline `score` plus its details), failures apart, mean
    prompt tokens and latency."""
    ok = [r for r in records if r["status"] == "ok"]
    aggregate = task.aggregate(ok) if ok else {"score": float("nan")}
    return aggregate | {"answered": len(ok), "failed": len(records) - len(ok),
                        "prompt_tokens": mean([r["prompt_tokens"] for r in ok]),
                        "latency_s": mean([r["latency_s"] for r in ok])}
