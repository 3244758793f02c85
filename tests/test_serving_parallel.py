"""Tensor parallelism: with `--tensor-parallel-size 2` (it runs on 2 CPU cores, one OpenMP thread per rank)
each rank holds half of the vision tower's heads; the CLS attention and keys are averaged over all heads
across ranks, so both ranks keep the same tokens, close to the single-rank server's."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest

from tests.helpers import greedy_with_logprobs
from tokencomp.benchmarks.load import scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig

# Smallest share of the single-rank kept set that two ranks must also keep. VisPruner de-duplicates in rounds
# (each round's survivors decide the next comparisons), so one comparison flipped by rounding cascades.
OVERLAP = {"id_pruner": 0.9, "visionzip": 0.9, "itg": 0.9, "vispruner": 0.6}
SPECS = [{"method": "none"}, {"method": "id_pruner", "budget": 32}, {"method": "visionzip", "budget": 32},
         {"method": "vispruner", "budget": 32}, {"method": "itg", "budget": 32}]


@pytest.fixture(scope="module")
def tp2(llava_served, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server-tp2.log"
    config = ServerConfig(model=str(llava_served.model_dir), port=free_port(), served_model_name="llava",
                          extra=["--tensor-parallel-size", "2"])
    with running(config, log=log, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1", "TOKENCOMP_LOG_KEPT": "1"}) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300), log


def kept_sets(log: Path, rank: str = "0") -> list[tuple[str, set[int]]]:
    """(method, kept indices) per compressed image in the order the engine logged them (TOKENCOMP_LOG_KEPT=1)."""
    return [(m, {int(i) for i in kept.split(",")})
            for r, m, kept in re.findall(r"tokencomp: rank=(\d) method=(\w+) kept=([\d,]+)", log.read_text())
            if r == rank]


def test_two_ranks_keep_the_same_tokens_and_stay_close_to_one_rank(tp2, llava_served, llava_client):
    """Ranks must agree exactly. Against the single-rank server the tower's features differ by float rounding
    (other reduction orders), so kept sets are compared with a stated tolerance (`OVERLAP`), and where the kept
    sets are equal the answers must be equal too (`none` is always exact)."""
    client, log = tp2
    before = len(kept_sets(llava_served.log))
    answers = []
    for messages in scene_requests(2):
        for tc in SPECS:
            body = {"mm_processor_kwargs": {"tokencomp": tc}}
            ours = greedy_with_logprobs(client, messages, body)[:2]
            answers.append((tc["method"], ours, greedy_with_logprobs(llava_client, messages, body)[:2]))
    rank0, rank1 = kept_sets(log, "0"), kept_sets(log, "1")
    assert len(rank0) == 2 * (len(SPECS) - 1)  # every compressed image, logged once per rank
    assert rank0 == rank1
    single = kept_sets(llava_served.log)[before:]
    compressed = [a for a in answers if a[0] != "none"]
    assert [m for m, _ in single] == [m for m, _, _ in compressed]
    for (method, two, one), (_, kept2), (_, kept1) in zip(compressed, rank0, single):
        assert len(kept2 & kept1) >= OVERLAP[method] * len(kept1), method
        if kept2 == kept1:
            assert two == one, method
    assert all(two == one for method, two, one in answers if method == "none")
