"""The serving path end to end: a real `tokencomp serve` process and vanilla vLLM, the stock `openai` client.

One server per module (start-up ~45 s). The model is a random-init checkpoint of the llava-1.5 architecture
scaled down and saved in the llava-hf layout, so this also proves llava-hf checkpoints are served.
"""

from __future__ import annotations

import base64
import io
import urllib.request

import openai
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

import tokencomp
from tests.conftest import API_KEY
from tests.helpers import greedy_with_logprobs, max_logprob_difference
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec

QUESTION = "what is the colour ?"
METHODS = [m for m in tokencomp.methods.available() if m != "none"]


def _image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(336, 336, 3, generator=g) * 255).byte().numpy())


def _data_url(image: Image.Image | bytes) -> str:
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        image = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.fixture(scope="module")
def model_dir(llava_served):
    return llava_served.model_dir


@pytest.fixture(scope="module")
def server(llava_served):
    return llava_served.url


@pytest.fixture(scope="module")
def client(llava_client):
    return llava_client


def ask(client, images, tc=None, question=QUESTION, **extra):
    content = [{"type": "image_url", "image_url": {"url": _data_url(i)}} for i in images]
    body = {"mm_processor_kwargs": {"tokencomp": tc}} if tc is not None else {}
    return client.chat.completions.create(
        model="llava", messages=[{"role": "user", "content": content + [{"type": "text", "text": question}]}],
        max_tokens=5, temperature=0, extra_body=body | extra)


def test_prompt_tokens_shrink_by_576_minus_k_per_request(client):
    full = ask(client, [_image(0)]).usage.prompt_tokens
    assert ask(client, [_image(0)], {"method": "none"}).usage.prompt_tokens == full
    for method, k in [("id_pruner", 16), ("itg", 64), ("cdpruner", 128), ("visionzip", 192), ("pool", 32),
                      ("random", 100), ("id_pruner", 128), ("itg", 1)]:
        assert ask(client, [_image(0)], {"method": method, "budget": k}).usage.prompt_tokens == full - (576 - k)
    two = ask(client, [_image(0), _image(1)], {"method": "itg", "budget": 64}).usage.prompt_tokens
    assert two == full + 576 - 2 * (576 - 64)  # each image gets its own K placeholders


@pytest.fixture(scope="module")
def reference(model_dir):
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    return model, AutoProcessor.from_pretrained(model_dir)


@pytest.mark.parametrize("method", ["none", *METHODS])
def test_served_greedy_output_equals_transformers_reference(client, reference, method):
    model, processor = reference
    for seed in range(3):
        spec = Spec(method, None if method == "none" else 64)
        served = ask(client, [_image(seed)], {"method": method, "budget": 64} if spec.budget else {"method": "none"})
        expected = answer(model, processor, _image(seed), QUESTION, spec, max_new_tokens=5).text
        assert served.choices[0].message.content.strip() == expected.strip(), (method, seed)


def test_question_aware_selection_follows_the_question(client, reference):
    model, processor = reference
    tc = {"method": "id_pruner", "budget": 32, "question_aware": True}
    for question in ["what is the colour ?", "how many red object ?", "what shape is in the image ?"]:
        served = ask(client, [_image(5)], tc, question=question).choices[0].message.content.strip()
        assert served == answer(model, processor, _image(5), question, Spec("id_pruner", 32, True), 5).text.strip()


BAD_TOKENCOMP = [
    ({"method": "nope", "budget": 64}, "mm_processor_kwargs.tokencomp.method", "id_pruner"),
    ({"method": "itg", "budget": 0}, "mm_processor_kwargs.tokencomp.budget", "[1, 576]"),
    ({"method": "itg", "budget": -5}, "mm_processor_kwargs.tokencomp.budget", "[1, 576]"),
    ({"method": "itg", "budget": 64.5}, "mm_processor_kwargs.tokencomp.budget", "[1, 576]"),
    ({"method": "itg", "budget": 10**12}, "mm_processor_kwargs.tokencomp.budget", "[1, 576]"),
    ({"method": "itg", "budget": "64"}, "mm_processor_kwargs.tokencomp.budget", "[1, 576]"),
    ({"method": "itg"}, "mm_processor_kwargs.tokencomp.budget", "required"),
    ({"method": 3, "budget": 64}, "mm_processor_kwargs.tokencomp.method", "one of"),
    ("itg", "mm_processor_kwargs.tokencomp", "must be an object"),
    ({"method": "itg", "budget": 8, "colour": 1}, "mm_processor_kwargs.tokencomp", "allowed: method, budget"),
    ({"method": "itg", "budget": 8, "options": {"tau": 0}}, "mm_processor_kwargs.tokencomp.options.tau", "> 0"),
    ({"method": "none", "budget": 8}, "mm_processor_kwargs.tokencomp.budget", "does not apply to method 'none'"),
    ({"method": "itg", "budget": 8, "options": {"beta": 1}}, "mm_processor_kwargs.tokencomp.options.beta",
     "allowed: tau"),
    ({"method": "itg", "budget": 8, "question_aware": "yes"}, "mm_processor_kwargs.tokencomp.question_aware",
     "true or false"),
]


@pytest.mark.parametrize("tc, field, allowed", BAD_TOKENCOMP)
def test_bad_tokencomp_fields_are_400_naming_field_and_allowed_values(client, tc, field, allowed):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [_image(0)], tc)
    assert err.value.body["param"] == field
    assert allowed in err.value.body["message"]
    assert ask(client, [_image(0)], {"method": "itg", "budget": 8}).usage.prompt_tokens > 0


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


BAD_MEDIA = {
    "corrupt image": ([b"definitely not an image"], "Failed to load image"),
    "zero-size image": ([b""], "Failed to load image"),
    "truncated image": ([_png(64, 64)[:60]], "Failed to load image"),
    "oversized image": ([_png(5000, 4000)], "this server accepts at most 16777216 pixels per image"),
    "too many images": ([_png(16, 16)] * 4, "At most 3 image(s)"),  # what a 2048-token context holds
}


@pytest.mark.parametrize("case", list(BAD_MEDIA))
def test_bad_media_is_400_and_the_server_keeps_serving(client, case):
    images, message = BAD_MEDIA[case]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, images)
    assert message in err.value.body["message"]
    assert ask(client, [_image(0)]).usage.prompt_tokens > 0


@pytest.mark.parametrize("url, message", [("http://127.0.0.1:9/cat.png", "allowed domains"),
                                          ("file:///etc/passwd", "allowed-local-media-path")])
def test_remote_and_local_media_are_off(client, url, message):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="llava", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what ?"}]}])
    assert message in err.value.body["message"]


def test_other_processor_kwargs_are_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="llava", max_tokens=2, extra_body={"mm_processor_kwargs": {"do_resize": False}},
                                       messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(_image(0))}}]}])
    assert err.value.body["param"] == "mm_processor_kwargs"


def test_api_key_is_enforced(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server, api_key="wrong", max_retries=0).models.list()


def test_metrics_count_visual_tokens_in_and_out(client, server):
    def counters() -> dict[str, float]:
        req = urllib.request.Request(server.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("tokencomp_visual_tokens") and 'method="pool"' in line}
    before = counters()
    ask(client, [_image(0), _image(1)], {"method": "pool", "budget": 36})
    after = counters()
    key_in, key_out = 'tokencomp_visual_tokens_in_total{method="pool"}', 'tokencomp_visual_tokens_out_total{method="pool"}'
    assert after[key_in] - before.get(key_in, 0) == 2 * 576
    assert after[key_out] - before.get(key_out, 0) == 2 * 36


@pytest.fixture(scope="module")
def vanilla(model_dir, tmp_path_factory):
    """vLLM as users run it without TokenComp: same model and settings, our plugin not loaded."""
    config = ServerConfig(model=str(model_dir), port=free_port(), api_key=API_KEY, served_model_name="llava",
                          vanilla=True)
    log = tmp_path_factory.mktemp("logs") / "vanilla.log"
    with running(config, log=log) as url:
        yield openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=120)
    assert "tokencomp: method=" not in log.read_text(), "our processor must not have run in vanilla vLLM"


def test_method_none_reproduces_vanilla_vllm(client, vanilla):
    """Same greedy tokens, prompt length and top-5 log-probabilities (max abs difference exactly 0)."""
    for seed in range(4):
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(_image(seed))}},
                                                 {"type": "text", "text": QUESTION}]}]
        ours = greedy_with_logprobs(client, messages, {"mm_processor_kwargs": {"tokencomp": {"method": "none"}}})
        theirs = greedy_with_logprobs(vanilla, messages)
        assert ours[:2] == theirs[:2]
        assert max_logprob_difference(ours[2], theirs[2]) == 0.0
