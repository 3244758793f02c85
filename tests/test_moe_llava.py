"""A LLaVA whose text model is an upcycled Mixtral (training/moe.py), saved in the hub layout, is served by a real
`tokencomp serve` process on vLLM's own Mixtral (its fused-MoE CPU path): greedy answers, prompt lengths and
kept patches equal transformers' (the reference that applies the same selection) with and without pruning.
The experts are made distinct and the routers random, so routing decides the answers."""

from __future__ import annotations

import re

import openai
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.llava_fixture import make_llava
from tokencomp.benchmarks.load import scene_requests
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes
from tokencomp.training.moe import save_moe_llava, upcycle


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    dense_dir = make_llava(tmp_path_factory.mktemp("dense") / "model")
    dense = LlavaForConditionalGeneration.from_pretrained(dense_dir).eval()
    moe = upcycle(dense, num_experts=4, top_k=2, router_std=1.0, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in moe.model.language_model.layers:
            for p in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return save_moe_llava(moe, tmp_path_factory.mktemp("moe") / "model", AutoProcessor.from_pretrained(dense_dir))


@pytest.fixture(scope="module")
def served(moe_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    config = ServerConfig(model=str(moe_dir), port=free_port(), served_model_name="llava")
    with running(config, log=log, env={"TOKENCOMP_LOG_KEPT": "1"}) as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120), log


def test_a_mixtral_text_llava_is_served_as_transformers_answers_with_and_without_pruning(served, moe_dir):
    client, log = served
    model = LlavaForConditionalGeneration.from_pretrained(moe_dir).eval()
    assert type(model.model.language_model).__name__ == "MixtralModel"
    processor = AutoProcessor.from_pretrained(moe_dir)
    for index, messages in enumerate(scene_requests(2)):
        question = messages[0]["content"][1]["text"]
        image = scenes.render(scenes.make_scene("test", index))
        for spec in (Spec(), Spec("id_pruner", 32), Spec("itg", 32)):
            body = {"method": spec.method, **({"budget": spec.budget} if spec.budget else {})}
            reply = client.chat.completions.create(model="llava", messages=messages, max_tokens=5, temperature=0,
                                                   extra_body={"mm_processor_kwargs": {"tokencomp": body}})
            expected = answer(model, processor, image, question, spec, max_new_tokens=5)
            assert reply.choices[0].message.content.strip() == expected.text.strip(), (index, spec)
            assert reply.usage.prompt_tokens == expected.prompt_tokens
            if spec.method != "none":
                kept = re.findall(rf"tokencomp: rank=0 method={spec.method} kept=([\d,]+)", log.read_text())
                assert kept[-1] == ",".join(map(str, expected.compressed.index.tolist()))
    assert "Using CPU Unquantized MoE backend" in log.read_text()  # vLLM's fused-MoE layer held the experts
