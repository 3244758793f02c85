"""LLaVA-NeXT and LLaVA-OneVision (tiny random checkpoints of the released layouts, `tests/llava_next_fixture.py`):
TokenComp does not compress them (anyres: a base view plus tiles, each image its own token count), and with the
plugin installed vLLM serves them with its own classes. Method `none`, asked for or not, answers with vanilla
vLLM's tokens and log-probabilities exactly; a request for a compressing method is a 400 naming the model type
and what is supported, after which the server keeps serving; a compressing server default stops
`tokencomp serve` at start-up with one line."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest
from transformers import AutoConfig, AutoProcessor

from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tests.llava_next_fixture import FAMILIES, make_llava_next
from tokencomp.benchmarks.load import scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.model_support import unsupported_reason
from tokencomp.serving.server import ServerConfig
from tokencomp.training import scenes

NONE = {"mm_processor_kwargs": {"tokencomp": {"method": "none"}}}


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, tmp_path_factory):
    model_dir = make_llava_next(tmp_path_factory.mktemp(request.param) / "model", request.param)
    logs = tmp_path_factory.mktemp("logs")

    def serve(vanilla: bool):
        config = ServerConfig(model=str(model_dir), port=free_port(), served_model_name="llava", vanilla=vanilla)
        return running(config, log=logs / f"{'vanilla' if vanilla else 'ours'}.log")

    with serve(False) as ours_url, serve(True) as vanilla_url:
        yield request.param, model_dir, *(
            openai.OpenAI(base_url=u, api_key="none", max_retries=0, timeout=120) for u in (ours_url, vanilla_url))


def test_none_is_vanilla_vllm_on_every_tile(served):
    """Asked for or by default, `none` is vanilla vLLM: same tokens, top-5 log-probabilities equal (max abs
    difference 0.0); the prompt holds every anyres token the transformers processor counts (base + tiles)."""
    _, model_dir, ours, vanilla = served
    processor = AutoProcessor.from_pretrained(model_dir)
    for seed, messages in enumerate(scene_requests(2)):
        expected = greedy_with_logprobs(vanilla, messages)
        for body in (NONE, None):
            text, prompt_tokens, logprobs = greedy_with_logprobs(ours, messages, body)
            assert (text, prompt_tokens) == expected[:2]
            assert max_logprob_difference(logprobs, expected[2]) == 0.0
        question = messages[0]["content"][1]["text"]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True)
        image = scenes.render(scenes.make_scene("test", seed))
        ids = processor(text=[prompt], images=[image], return_tensors="pt").input_ids[0]
        assert expected[1] == len(ids) > 4 * (112 // 14) ** 2  # more than the base view: tiles too


@pytest.mark.parametrize("tc", [{"method": "id_pruner", "budget": 64}, {"method": "itg", "budget": 0.5}])
def test_compressing_request_is_a_400_naming_the_model_and_the_server_keeps_serving(served, tc):
    family, _, ours, vanilla = served
    (messages,) = scene_requests(1)
    with pytest.raises(openai.BadRequestError) as err:
        greedy_with_logprobs(ours, messages, {"mm_processor_kwargs": {"tokencomp": tc}})
    assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.method"
    message = err.value.body["message"]
    assert f"this model's type is {family!r}: only method 'none' is available" in message
    assert "tokencomp compresses LLaVA (model type 'llava')" in message and "Qwen2-VL ('qwen2_vl')" in message
    assert greedy_with_logprobs(ours, messages, NONE)[:2] == greedy_with_logprobs(vanilla, messages)[:2]


def test_a_compressing_default_stops_the_server_at_start(served):
    family, model_dir, _, _ = served
    proc = subprocess.run([sys.executable, "-m", "tokencomp.cli", "serve", str(model_dir), "--method", "id_pruner",
                           "--budget", "64"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    why = unsupported_reason(AutoConfig.from_pretrained(model_dir), "id_pruner")
    assert f"this model's type is {family!r}" in why
    assert proc.stderr.strip().splitlines() == [f"tokencomp serve: error: --method id_pruner: {why}"]
