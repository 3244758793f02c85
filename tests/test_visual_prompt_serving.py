"""`tokencomp serve --visual-prompt FILE`: the served model answers as transformers does on the prompted pixel
values, with token pruning on (one vLLM server, ~1 min)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.serving.hf_reference import compress_pixels, prompt_ids
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig
from tokencomp.serving.spec import Spec
from tokencomp.serving.visual_prompt import load_visual_prompt
from tokencomp.training import reprogramming_task as task

PROMPT = Path(__file__).resolve().parent.parent / "training" / "reports" / "visual_prompt" / "otlm_prompt.safetensors"
IMAGES = 8


@torch.no_grad()
def reference_answer(model, processor, image, spec: Spec, prompt=None) -> str:
    """Greedy answer of transformers to the task question, the prompt added to the processed pixels."""
    ids = prompt_ids(processor, task.QUESTION)
    (pos,) = (ids == model.config.image_token_index).nonzero()[0].tolist()
    pixels = processor.image_processor(image, return_tensors="pt").pixel_values
    if prompt is not None:
        pixels = prompt.apply(pixels)
    compressed = compress_pixels(model, pixels, spec, ids[ids != model.config.image_token_index])
    embed = model.get_input_embeddings()
    x = torch.cat([embed(ids[:pos]), compressed.tokens, embed(ids[pos + 1:])])[None]
    out = model.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long), max_new_tokens=3,
                         do_sample=False)
    return processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pool"])  # at K = 64 the prompt changes 1 of 8 answers (0 with id_pruner)
def test_served_prompt_matches_transformers_with_pruning(tmp_path, method):
    model = LlavaForConditionalGeneration.from_pretrained(DEFAULT_MODEL).eval()
    processor = AutoProcessor.from_pretrained(DEFAULT_MODEL)
    prompt = load_visual_prompt(PROMPT)
    spec = Spec(method, 64)
    images = [task.make_example("test", i)[0] for i in range(IMAGES)]
    with_prompt = [reference_answer(model, processor, im, spec, prompt) for im in images]
    without = [reference_answer(model, processor, im, spec) for im in images]
    assert with_prompt != without  # else this test could not tell whether the server adds the prompt
    config = ServerConfig(model=str(DEFAULT_MODEL), port=free_port(), visual_prompt=str(PROMPT))
    with running(config, log=tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        model_id = client.models.list().data[0].id
        for image, expected in zip(images, with_prompt):
            buf = io.BytesIO()
            image.save(buf, "PNG")
            served = client.chat.completions.create(
                model=model_id, max_tokens=3, temperature=0,
                extra_body={"mm_processor_kwargs": {"tokencomp": {"method": method, "budget": 64}}},
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," +
                                                        base64.b64encode(buf.getvalue()).decode()}},
                    {"type": "text", "text": task.QUESTION}]}])
            assert served.choices[0].message.content.strip() == expected
            assert served.usage.prompt_tokens == len(prompt_ids(processor, task.QUESTION)) - 1 + 64
