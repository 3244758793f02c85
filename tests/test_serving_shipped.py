"""The shipped model through a real `tokencomp serve`: for every method, the served greedy answer equals the
transformers reference applying the same `tokencomp.compress` to the same features, on fixed test questions."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

import tokencomp
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes
from tokencomp.training.model_card import fixed_questions

QUESTIONS = fixed_questions(12)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    config = ServerConfig(model=str(DEFAULT_MODEL), port=free_port())
    with running(config, log=tmp_path_factory.mktemp("logs") / "server.log") as url:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference():
    return LlavaForConditionalGeneration.from_pretrained(DEFAULT_MODEL).eval(), AutoProcessor.from_pretrained(DEFAULT_MODEL)


def _url(row: dict) -> str:
    buf = io.BytesIO()
    scenes.render(scenes.make_scene("test", row["scene"])).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("method", tokencomp.methods.available())
def test_served_answers_equal_transformers_reference(client, reference, method):
    model, processor = reference
    spec = Spec(method, None if method == "none" else 64)
    tc = {"method": method} | ({"budget": 64} if spec.budget else {})
    model_id = client.models.list().data[0].id
    for row in QUESTIONS:
        served = client.chat.completions.create(
            model=model_id, max_tokens=6, temperature=0, extra_body={"mm_processor_kwargs": {"tokencomp": tc}},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _url(row)}},
                                                   {"type": "text", "text": row["question"]}]}])
        image = scenes.render(scenes.make_scene("test", row["scene"]))
        expected = answer(model, processor, image, row["question"], spec, max_new_tokens=6)
        assert served.choices[0].message.content.strip() == expected.text.strip(), (method, row["question"])
        assert served.usage.prompt_tokens == expected.prompt_tokens
