"""LLaVA variants TokenComp does not compress are still served by vLLM's own code once the plugin is installed:
with method `none` a SigLIP-tower LLaVA (no CLS token, 'full' features) answers with the same tokens and the
same log-probabilities as vanilla vLLM, and asking it for compression is a 400 that names the tower."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tests.llava_fixture import make_llava
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
