"""Models TokenComp does not compress are still served by vLLM's own code with the plugin installed: with method
`none` a SigLIP-tower LLaVA (no CLS token, 'full' features), Qwen2-VL and Qwen2.5-VL answer with the same tokens
and the same log-probabilities as vanilla vLLM, and asking them for compression is a 400 that names what is
missing (never a silent 200 with every token); a server default they cannot apply stops `tokencomp serve`."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tests.llava_fixture import make_llava
from tests.qwen_fixture import make_qwen
from tokencomp.bench.hostile import data_url, png
from tokencomp.bench.load import scene_requests
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("siglip") / "model", tower="siglip")


def _client(model_dir, tmp_path_factory, vanilla: bool):
    config = ServerConfig(model=str(model_dir), port=free_port(), served_model_name="llava", vanilla=vanilla)
    return running(config, log=tmp_path_factory.mktemp("logs") / f"server-{'vanilla' if vanilla else 'ours'}.log")


@pytest.fixture(scope="module")
def ours(siglip_dir, tmp_path_factory):
    with _client(siglip_dir, tmp_path_factory, vanilla=False) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vanilla(siglip_dir, tmp_path_factory):
    with _client(siglip_dir, tmp_path_factory, vanilla=True) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)


def test_none_on_a_siglip_llava_is_vanilla_vllm(ours, vanilla):
    for messages in scene_requests(3):
        text, prompt_tokens, logprobs = greedy_with_logprobs(ours, messages, {"mm_processor_kwargs": {
            "tokencomp": {"method": "none"}}})
        text_v, prompt_tokens_v, logprobs_v = greedy_with_logprobs(vanilla, messages)
        assert (text, prompt_tokens) == (text_v, prompt_tokens_v)
        assert max_logprob_difference(logprobs, logprobs_v) == 0.0


def test_compressing_a_siglip_llava_is_a_400_naming_the_tower(ours):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png(224, 224))}},
                                             {"type": "text", "text": "what is the colour ?"}]}]
    with pytest.raises(openai.BadRequestError) as err:
        ours.chat.completions.create(model="llava", messages=messages, max_tokens=2,
                                     extra_body={"mm_processor_kwargs": {"tokencomp": {"method": "itg", "budget": 8}}})
    assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.method"
    assert "'siglip_vision_model' / 'full'" in err.value.body["message"]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen(request, tmp_path_factory):
    model_dir = make_qwen(tmp_path_factory.mktemp(request.param) / "model", request.param)
    with _client(model_dir, tmp_path_factory, vanilla=False) as ours_url, \
            _client(model_dir, tmp_path_factory, vanilla=True) as vanilla_url:
        yield request.param, model_dir, *(openai.OpenAI(base_url=u, api_key="none", max_retries=0, timeout=120)
                                          for u in (ours_url, vanilla_url))


def test_none_on_qwen_is_vanilla_vllm_and_compression_is_refused(qwen):
    family, _, ours_client, vanilla_client = qwen
    for messages in scene_requests(2):
        ours_reply = greedy_with_logprobs(ours_client, messages, {"mm_processor_kwargs": {
            "tokencomp": {"method": "none"}}})
        vanilla_reply = greedy_with_logprobs(vanilla_client, messages)
        assert ours_reply[:2] == vanilla_reply[:2]
        assert max_logprob_difference(ours_reply[2], vanilla_reply[2]) == 0.0
    with pytest.raises(openai.BadRequestError) as err:
        ours_client.chat.completions.create(model="llava", messages=messages, max_tokens=2, extra_body={
            "mm_processor_kwargs": {"tokencomp": {"method": "itg", "budget": 32}}})
    assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.method"
    assert f"this model's type is '{family}'" in err.value.body["message"]


def test_a_default_the_model_cannot_apply_stops_the_server_at_start(qwen):
    _, model_dir, _, _ = qwen
    proc = subprocess.run([sys.executable, "-m", "tokencomp.cli", "serve", str(model_dir), "--method", "itg",
                           "--budget", "64"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    expected = ("tokencomp serve: error: --method itg: tokencomp compresses LLaVA models (model type 'llava') with "
                f"a CLIP vision tower; this model's type is '{qwen[0]}': only method 'none' is available")
    assert proc.stderr.strip().splitlines() == [expected]
