"""A LLaVA with a SigLIP tower (no CLS token, 'full' features): with method `none` it answers with the same
tokens and log-probabilities as vanilla vLLM; it compresses (importance: the attention each patch receives)
exactly as the transformers reference does, except with the methods defined by CLS attention, which are a 400
saying why. Qwen2-VL / Qwen2.5-VL: `tests/test_serving_qwen.py`."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tests.llava_fixture import make_llava
from tokencomp.benchmarks.hostile import data_url, png
from tokencomp.benchmarks.load import scene_requests
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("siglip") / "model", tower="siglip")


def _client(model_dir, tmp_path_factory, vanilla: bool, log: Path | None = None):
    config = ServerConfig(model=str(model_dir), port=free_port(), served_model_name="llava", vanilla=vanilla)
    log = log or tmp_path_factory.mktemp("logs") / f"server-{'vanilla' if vanilla else 'ours'}.log"
    return running(config, log=log, env={"TOKENCOMP_LOG_KEPT": "1"})


@pytest.fixture(scope="module")
def ours_log(tmp_path_factory):
    return tmp_path_factory.mktemp("logs") / "server-ours.log"


@pytest.fixture(scope="module")
def ours(siglip_dir, tmp_path_factory, ours_log):
    with _client(siglip_dir, tmp_path_factory, vanilla=False, log=ours_log) as url:
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


SIGLIP_METHODS = ["id_pruner", "itg", "mmr", "cdpruner", "divprune", "random", "pool", "first"]


@pytest.mark.parametrize("method", SIGLIP_METHODS)
def test_siglip_llava_compresses_as_the_transformers_reference(ours, ours_log, siglip_dir, method):
    """No CLS token: importance is the attention each patch receives; the served kept indices (which the
    engine logs with TOKENCOMP_LOG_KEPT=1), prompt lengths and answers equal the transformers reference applying
    the same selection to its own features."""
    model = LlavaForConditionalGeneration.from_pretrained(siglip_dir).eval()
    processor = AutoProcessor.from_pretrained(siglip_dir)
    full = None
    for seed, messages in enumerate(scene_requests(2)):
        question = messages[0]["content"][1]["text"]
        image = scenes.render(scenes.make_scene("test", seed))
        served = ours.chat.completions.create(
            model="llava", messages=messages, max_tokens=5, temperature=0,
            extra_body={"mm_processor_kwargs": {"tokencomp": {"method": method, "budget": 32}}})
        expected = answer(model, processor, image, question, Spec(method, 32), max_new_tokens=5)
        assert served.choices[0].message.content.strip() == expected.text.strip()
        assert served.usage.prompt_tokens == expected.prompt_tokens
        logged = re.findall(rf"tokencomp: rank=0 method={method} kept=([\d,]+)", ours_log.read_text())
        assert logged[-1] == ",".join(map(str, expected.compressed.index.tolist()))
        full = full or greedy_with_logprobs(ours, messages, {"mm_processor_kwargs": {"tokencomp": {"method": "none"}}})
        assert full[1] - served.usage.prompt_tokens == 256 - 32  # 16 x 16 patches at 224 px, 32 kept


@pytest.mark.parametrize("method", ["visionzip", "vispruner"])
def test_cls_methods_on_a_siglip_llava_are_a_400_naming_why(ours, method):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png(224, 224))}},
                                             {"type": "text", "text": "what is the colour ?"}]}]
    with pytest.raises(openai.BadRequestError) as err:
        ours.chat.completions.create(model="llava", messages=messages, max_tokens=2, extra_body={
            "mm_processor_kwargs": {"tokencomp": {"method": method, "budget": 8}}})
    assert err.value.body["param"] == "mm_processor_kwargs.tokencomp.method"
    assert "SigLIP tower has no CLS token" in err.value.body["message"]
