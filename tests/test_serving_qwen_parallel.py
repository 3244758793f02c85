"""Qwen2.5-VL under `--tensor-parallel-size 2` (on 2 CPU cores, one OpenMP thread per rank). Each rank's hook on
the tower's last block sees only its share of the heads, so the attention each patch receives and the keys are
summed across ranks before any method reads them: both ranks keep the same tokens. Qwen2.5-VL is the family
tested because its path is Qwen2-VL's plus the window reordering (`serving/qwen2_vl.py` shares everything else).

Against one rank: `tests/test_serving_qwen.py` shows the single-rank server keeps exactly the transformers
reference's tokens, so the two ranks are compared with that reference. The tower's features differ from it by
float rounding (other reduction orders), so kept sets must share at least `OVERLAP` of the reference's tokens,
and where they are equal the greedy tokens must be equal too and the top-5 log-probabilities within `LOGPROB`
(the language model is split over the ranks as well, so its sums run in another order than on one rank).
With `--mm-encoder-tp-mode data` vLLM replicates the tower and would give each rank some of the images; the
compressing path runs every image on every rank instead, so the kept sets are the reference's as well."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.qwen_fixture import ask, make_qwen, noise_conversation
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.qwen_reference import answer
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec

OVERLAP = 0.9  # smallest share of the reference's kept tokens the two ranks must keep too
LOGPROB = 5e-3  # largest top-5 log-probability difference from the reference (measured: 1.2e-3)
METHODS = ["id_pruner", "itg", "cdpruner", "divprune"]
BUDGET = 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model_dir = make_qwen(tmp_path_factory.mktemp("qwen2_5_vl") / "model", "qwen2_5_vl")
    return model_dir, AutoModelForImageTextToText.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(
        model_dir)


@pytest.fixture(scope="module", params=["weights", "data"])
def tp2(request, reference, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / f"server-tp2-{request.param}.log"
    config = ServerConfig(model=str(reference[0]), port=free_port(), served_model_name="llava",
                          extra=["--tensor-parallel-size", "2", "--mm-encoder-tp-mode", request.param])
    with running(config, log=log, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "TOKENCOMP_LOG_KEPT": "1"}) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300), log


def kept(log: Path, rank: str) -> list[tuple[str, list[int]]]:
    """(method, kept indices) per compressed image, in the order the engine logged them (TOKENCOMP_LOG_KEPT=1)."""
    return [(m, [int(i) for i in k.split(",")])
            for r, m, k in re.findall(r"tokencomp: rank=(\d) method=(\w+) kept=([\d,]+)", log.read_text()) if r == rank]


def test_two_ranks_keep_the_same_tokens_as_each_other_and_as_one_rank(tp2, reference):
    client, log = tp2
    _, model, processor = reference
    served, expected = [], []
    for seed in range(2):
        image, question, messages = noise_conversation(seed)
        for method in ["none", *METHODS]:
            tc = {"method": method} | ({"budget": BUDGET} if method != "none" else {})
            served.append(ask(client, messages, tc))
            expected.append(answer(model, processor, image, question, Spec(method, tc.get("budget"))))
    rank0, rank1 = kept(log, "0"), kept(log, "1")
    assert len(rank0) == 2 * len(METHODS)  # every compressed image, logged once per rank
    assert rank0 == rank1
    compressed = [(s, e) for s, e in zip(served, expected) if e.compressed.index.numel() == BUDGET]
    assert len(compressed) == len(rank0)
    worst = 0.0
    for (method, ours), ((tokens, prompt_tokens, logprobs), ref) in zip(rank0, compressed):
        theirs = ref.compressed.index.tolist()
        assert len(set(ours) & set(theirs)) >= OVERLAP * BUDGET, method
        assert prompt_tokens == ref.prompt_tokens
        if ours == theirs:
            assert tokens == ref.tokens, method
            worst = max(worst, *(abs(s[t] - r[t]) for s, r in zip(logprobs, ref.logprobs) for t in s if t in r))
    for (tokens, prompt_tokens, _), ref in zip(served, expected):
        if ref.compressed.index.numel() != BUDGET:  # method none
            assert (tokens, prompt_tokens) == (ref.tokens, ref.prompt_tokens)
    assert worst < LOGPROB
