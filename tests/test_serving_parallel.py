"""Tensor parallelism: with `--tensor-parallel-size 2` (it runs on 2 CPU cores, one OpenMP thread per rank)
each rank holds half of the vision tower's heads; the CLS attention and keys are averaged over all heads
across ranks, so both ranks keep the same tokens and the answers equal the single-rank server's."""

from __future__ import annotations

import re

import openai
import pytest

from tests.helpers import greedy_with_logprobs
from tokencomp.bench.load import scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig

SPECS = [{"method": "none"}, {"method": "id_pruner", "budget": 32}, {"method": "visionzip", "budget": 32},
         {"method": "vispruner", "budget": 32}, {"method": "itg", "budget": 32}]


@pytest.fixture(scope="module")
def tp2(llava_served, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server-tp2.log"
    config = ServerConfig(model=str(llava_served.model_dir), port=free_port(), served_model_name="llava",
                          extra=["--tensor-parallel-size", "2"])
    with running(config, log=log, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "TOKENCOMP_LOG_KEPT": "1"}) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300), log


def test_two_ranks_keep_the_same_tokens_and_answer_as_one(tp2, llava_client):
    client, log = tp2
    for messages in scene_requests(2):
        for tc in SPECS:
            body = {"mm_processor_kwargs": {"tokencomp": tc}}
            text, prompt_tokens, _ = greedy_with_logprobs(client, messages, body)
            assert (text, prompt_tokens) == greedy_with_logprobs(llava_client, messages, body)[:2], tc
    kept = re.findall(r"tokencomp: rank=(\d) method=(\w+) kept=(\w+)", log.read_text())
    by_rank = {rank: [(m, d) for r, m, d in kept if r == rank] for rank in ("0", "1")}
    assert len(by_rank["0"]) == 2 * (len(SPECS) - 1)  # every compressed image, logged once per rank
    assert by_rank["0"] == by_rank["1"]
