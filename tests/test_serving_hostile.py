"""A hostile or careless client against a real `tokencomp serve` (the shared session server of conftest): every
kind of bad request in `tokencomp.benchmarks.hostile` is a 4xx that harms no other request, the corrected retry of
a request refused after its image was processed succeeds, and /metrics and the log count only what was served."""

from __future__ import annotations

import concurrent.futures
import urllib.request

import openai
import pytest

from tests.conftest import API_KEY
from tokencomp.benchmarks.hostile import HOSTILE, data_url, png
from tokencomp.benchmarks.load import scene_requests

BY_NAME = {h.name: h for h in HOSTILE}
TC = {"method": "itg", "budget": 16}


@pytest.fixture(scope="module")
def conversations():
    return scene_requests(6)


def ask(client, messages, tc=TC, **kwargs):
    params = {"model": "llava", "messages": messages, "max_tokens": 4, "temperature": 0,
              "extra_body": {"mm_processor_kwargs": {"tokencomp": tc}}} | kwargs
    return client.chat.completions.create(**params).choices[0].message.content


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_hostile_request_is_a_4xx_and_the_server_keeps_serving(llava_client, conversations, name):
    messages, kwargs = BY_NAME[name].make(conversations[0], TC)
    with pytest.raises(openai.BadRequestError) as err:
        ask(llava_client, messages, **kwargs)
    assert "VLLM_" not in err.value.body["message"], "a client cannot set the server's environment"
    assert ask(llava_client, conversations[1])


@pytest.mark.parametrize("name", [h.name for h in HOSTILE if h.after_processing])
def test_corrected_retry_after_a_late_refusal_succeeds(llava_client, conversations, name):
    """The image was processed (and cached) before the refusal; the same image and spec must then serve."""
    position = HOSTILE.index(BY_NAME[name])
    messages, tc = conversations[2 + position % 4], {"method": "id_pruner", "budget": 8 + position}  # fresh spec
    bad_messages, kwargs = BY_NAME[name].make(messages, tc)
    with pytest.raises(openai.BadRequestError):
        ask(llava_client, bad_messages, **kwargs)
    assert ask(llava_client, messages, tc)


@pytest.mark.parametrize("name, field", [
    ("tau that overflows float32", "mm_processor_kwargs.tokencomp.options.tau"),
    ("option of the wrong type", "mm_processor_kwargs.tokencomp.options.restore_norm"),
    ("budget with method none", "mm_processor_kwargs.tokencomp.budget"),
    ("bad spec without an image", "mm_processor_kwargs.tokencomp.budget"),
    ("unknown processor kwarg", "mm_processor_kwargs"),
])
def test_refusals_name_the_exact_field(llava_client, conversations, name, field):
    messages, kwargs = BY_NAME[name].make(conversations[0], TC)
    with pytest.raises(openai.BadRequestError) as err:
        ask(llava_client, messages, **kwargs)
    assert err.value.body["param"] == field


@pytest.mark.parametrize("name, words", [("20000x1 image", "aspect ratio 20000:1"),
                                         ("decompression bomb", "at most 16777216 pixels per image")])
def test_image_refusals_say_why(llava_client, conversations, name, words):
    messages, kwargs = BY_NAME[name].make(conversations[0], TC)
    with pytest.raises(openai.BadRequestError) as err:
        ask(llava_client, messages, **kwargs)
    assert words in err.value.body["message"]


def test_text_only_requests_take_a_valid_spec(llava_client):
    assert ask(llava_client, [{"role": "user", "content": "what is the colour ?"}], {"method": "itg", "budget": 8})
    assert ask(llava_client, [{"role": "user", "content": "what is the colour ?"}],
               {"method": "itg", "budget": 8, "options": {"restore_norm": False}})


def test_extreme_options_in_a_batch_leave_other_answers_unchanged(llava_client, conversations):
    """Requests that run together share engine batches and KV-cache blocks: answers of ordinary requests sent
    beside poisoned and extreme ones must equal their answers when sent alone."""
    plain = [(m, {"method": "pool", "budget": 36}) for m in conversations] + [(conversations[0], {"method": "none"})]
    clean = [ask(llava_client, m, tc, max_tokens=6) for m, tc in plain]
    extreme = [{"method": "itg", "budget": 32, "options": {"tau": tau}} for tau in (1e-39, 1e-30, 1e-6, 1e30)]
    extreme += [{"method": "mmr", "budget": 32, "options": {"lam": 0.0}},
                {"method": "id_pruner", "budget": 1, "options": {"alpha": 1.0, "rho": 0.0}}]

    def send(job):
        kind, messages, tc = job
        try:
            return kind, ask(llava_client, messages, tc, max_tokens=6)
        except openai.BadRequestError:
            return kind, None

    jobs = [("extreme", conversations[i % 6], tc) for i, tc in enumerate(extreme)]
    for i, (m, tc) in enumerate(plain):
        jobs.insert(2 * i, ("plain", m, tc))
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    assert [answer for kind, answer in results if kind == "plain"] == clean


def _counters(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("tokencomp_") and 'method="mmr"' in line}


def test_metrics_and_log_count_only_what_was_served(llava_client, llava_served, conversations):
    """/metrics is open without the API key, as in vLLM (Prometheus scrapes it); /v1 is not."""
    before = _counters(llava_served.url)
    tc = {"method": "mmr", "budget": 20}
    for hostile in [h for h in HOSTILE if h.after_processing]:
        with pytest.raises(openai.BadRequestError):
            messages, kwargs = hostile.make(conversations[3], tc)
            ask(llava_client, messages, **kwargs)
    assert _counters(llava_served.url) == before, "refused requests must not be counted"
    (turn,) = conversations[4]
    second = {"type": "image_url", "image_url": {"url": data_url(png(336, 336))}}
    ask(llava_client, [{"role": "user", "content": [second, *turn["content"]]}], tc)
    after = _counters(llava_served.url)
    assert after['tokencomp_images_total{method="mmr"}'] - before.get('tokencomp_images_total{method="mmr"}', 0) == 2
    assert (after['tokencomp_visual_tokens_out_total{method="mmr"}']
            - before.get('tokencomp_visual_tokens_out_total{method="mmr"}', 0)) == 40
    assert "tokencomp: method=mmr budget=20 images=2 visual tokens 1152 -> 40" in llava_served.log.read_text()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=llava_served.url, api_key=API_KEY + "x", max_retries=0).models.list()
