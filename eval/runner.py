"""Run a task against any OpenAI-compatible endpoint: bounded concurrency, retries with backoff, one JSONL line
per finished sample. A killed run resumes from its log without asking again; a request that still fails after
its retries is recorded as failed, counted apart from wrong answers, and asked again by the next run.

A log belongs to one model, task and setting (method, budget, question_aware, seed, options): its file name
carries the digest of that key, and every record carries the key's digest and its sample's fingerprint, so a run
with another model, option or changed data never takes an old answer for its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import openai
from tqdm import tqdm

from tokencomp.eval.fingerprint import cluster_of, sample_fingerprint
from tokencomp.eval.metrics import mean
from tokencomp.eval.sample import Sample, Task


@dataclass(frozen=True)
class Setting:
    method: str
    budget: int | None  # None for method "none"
    question_aware: bool = False
    seed: int = 0
    options: tuple[tuple[str, float | int | bool], ...] = ()  # the method's own options, sorted by name

    @property
    def variant(self) -> str:
        """The method and what sets it apart besides the budget: `itg`, `itg[qa,tau=0.1]`."""
        extras = (["qa"] if self.question_aware else []) + ([f"seed={self.seed}"] if self.seed else [])
        extras += [f"{k}={v}" for k, v in self.options]
        return self.method + (f"[{','.join(extras)}]" if extras else "")

    @property
    def label(self) -> str:
        return self.variant if self.budget is None else f"{self.variant}@{self.budget}"

    def body(self) -> dict:
        tc = {"method": self.method} | ({"budget": self.budget} if self.budget is not None else {})
        tc |= ({"question_aware": True} if self.question_aware else {}) | ({"seed": self.seed} if self.seed else {})
        tc |= {"options": dict(self.options)} if self.options else {}
        return {"mm_processor_kwargs": {"tokencomp": tc}}


@dataclass(frozen=True)
class Log:
    """The JSONL log of one (model, task, setting)."""

    path: Path
    key: str  # digest of the (model, task, setting) key
    description: str  # the key itself, as JSON

    @classmethod
    def of(cls, out: Path, model: str, task_label: str, task: Task, setting: Setting) -> Log:
        """The log under `out/<task_label>/`, named `<method>@<budget>-<key digest>.jsonl`."""
        key = {"model": model, "task": task_label, "max_tokens": task.max_tokens, "method": setting.method,
               "budget": setting.budget, "question_aware": setting.question_aware, "seed": setting.seed,
               "options": dict(setting.options)}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        stem = setting.method if setting.budget is None else f"{setting.method}@{setting.budget}"
        return cls(out / task_label / f"{stem}-{digest}.jsonl", digest, json.dumps(key | {"label": setting.label}))

    def open(self) -> TextIO:
        """The log, opened to append; the full key is written beside it (`.key.json`) for people and for
        recomputing tables."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = self.path.with_suffix(".key.json")
        if not sidecar.is_file():
            sidecar.write_text(self.description)
        return open(self.path, "a")


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
               retries: int, key: str) -> dict:
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
                        time.perf_counter() - start, key)
    return _base(sample, key) | {"status": "failed", "error": error}


def _base(sample: Sample, key: str) -> dict:
    return {"id": sample.id, "question": sample.question, "answers": list(sample.answers), "group": sample.group,
            "meta": sample.meta, "key": key, "sample": sample_fingerprint(sample), "cluster": cluster_of(sample)}


def answered(task: Task, sample: Sample, prediction: str, prompt_tokens: int, latency_s: float, key: str = "") -> dict:
    """The log record of an answered sample (`key`: its log's key digest)."""
    return _base(sample, key) | {"status": "ok", "prediction": prediction, "score": task.score(prediction, sample),
                            "prompt_tokens": prompt_tokens, "latency_s": round(latency_s, 4)}


def served_model(endpoint: str, api_key: str = "none") -> str:
    """The name the endpoint serves its (first) model under."""
    with openai.OpenAI(base_url=endpoint, api_key=api_key, max_retries=2, timeout=30) as client:
        try:
            return client.models.list().data[0].id
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            message = f"--endpoint {endpoint} does not answer ({exc}); expected a running server's …/v1 URL"
            raise ValueError(message) from None


async def run_endpoint(endpoint: str, task: Task, samples: list[Sample], setting: Setting, log: Log, *,
                       concurrency: int = 4, retries: int = 3, api_key: str = "none") -> list[dict]:
    """Answer every sample without an answer in `log`, appending each result as it finishes; return the log's
    record of every sample."""
    client = openai.AsyncOpenAI(base_url=endpoint, api_key=api_key, max_retries=0, timeout=300)
    model = (await client.models.list()).data[0].id
    todo = pending(samples, log)
    gate = asyncio.Semaphore(concurrency)
    with log.open() as out, progress(task, setting, samples, todo) as bar:

        async def one(sample: Sample) -> None:
            async with gate:
                record = await _ask(client, model, task, sample, setting, retries, log.key)
            out.write(json.dumps(record) + "\n")
            out.flush()
            bar.update()

        await asyncio.gather(*(one(s) for s in todo))
    await client.close()
    return logged(samples, log)


def _latest(samples: list[Sample], log: Log) -> dict[str, dict]:
    """Sample fingerprint -> its latest answered record in `log`, else its latest failed one. Records of
    another key or of a sample that changed since (another fingerprint) are never matched."""
    latest: dict[str, dict] = {}
    wanted = {sample_fingerprint(s) for s in samples}
    for r in load_log(log.path):
        fp = r.get("sample")
        if r.get("key") == log.key and fp in wanted and (r["status"] == "ok" or latest.get(fp, r)["status"] != "ok"):
            latest[fp] = r
    return latest


def pending(samples: list[Sample], log: Log) -> list[Sample]:
    """The samples without an answer in `log` (never asked, cut short, or failed): what a run still asks."""
    latest = _latest(samples, log)
    return [s for s in samples if latest.get(sample_fingerprint(s), {}).get("status") != "ok"]


def logged(samples: list[Sample], log: Log) -> list[dict]:
    """The record `log` holds for each of `samples`, in their order (samples never asked are left out)."""
    latest = _latest(samples, log)
    return [latest[fp] for fp in map(sample_fingerprint, samples) if fp in latest]


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
