"""The Gradio demo, running for real: driven through `gradio_client` and through headless Chromium."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import sync_playwright
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.llava_fixture import make_llava
from tokencomp.demo.browser import ask as browser_ask
from tokencomp.demo.browser import open_page, upload, wait_for
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port
from tokencomp.serving.spec import Spec

QUESTION = "what is the colour ?"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    g = torch.Generator().manual_seed(3)
    scene = root / "scene.png"
    Image.fromarray((torch.rand(300, 400, 3, generator=g) * 255).byte().numpy()).save(scene)
    broken = root / "broken.png"
    broken.write_bytes(b"this is not a png")
    return {"model": make_llava(root / "model"), "scene": scene, "broken": broken}


@pytest.fixture(scope="module")
def demo_url(files):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokencomp.cli", "demo", str(files["model"]), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(demo_url):
    return Client(demo_url, verbose=False)


def _overlay(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_answer_matches_the_model_and_overlay_follows_the_budget(client, files):
    model = LlavaForConditionalGeneration.from_pretrained(files["model"]).eval()
    processor = AutoProcessor.from_pretrained(files["model"])
    overlays = {}
    for budget in (16, 128):
        status, answer_md, full_md, overlay = client.predict(handle_file(files["scene"]), QUESTION, "itg", budget, True,
                                                             api_name="/ask")
        expected = answer(model, processor, Image.open(files["scene"]).convert("RGB"), QUESTION, Spec("itg", budget))
        assert f"**itg:** {expected.text.strip()}" in answer_md
        assert f"prompt tokens {expected.prompt_tokens}" in answer_md
        assert f"kept {budget} of 576" in status
        assert "prompt tokens 583" in full_md  # the comparison ran the full model
        overlays[budget] = _overlay(overlay)
    assert overlays[16].shape == overlays[128].shape == (336, 336, 3)
    assert np.abs(overlays[16] - overlays[128]).mean() > 5, "more kept patches must light up more of the image"


@pytest.mark.parametrize("image, method, budget, message", [
    (None, "itg", 64, "Upload an image"),
    ("broken", "itg", 64, "could not be read as an image"),
    ("scene", "itg", 2.5, "budget must be an integer in [1, 576]"),
    ("scene", "nope", 64, "method must be one of"),
])
def test_bad_inputs_show_a_message(client, files, image, method, budget, message):
    upload = None if image is None else handle_file(files[image])
    status, answer_md, _, overlay = client.predict(upload, QUESTION, method, budget, False, api_name="/ask")
    assert message in status and answer_md == "" and overlay is None


@pytest.mark.parametrize("budget, message", [(0, "less than minimum value 1"), (1000, "greater than maximum value 576")])
def test_out_of_range_budget_is_refused_by_the_slider_with_a_message(client, files, budget, message):
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(files["scene"]), QUESTION, "itg", budget, False, api_name="/ask")
    assert "kept 8 of 576" in client.predict(handle_file(files["scene"]), QUESTION, "itg", 8, False, api_name="/ask")[0]


def test_real_browser_sees_answer_and_budget_dependent_overlay(demo_url, files):
    with sync_playwright() as p:
        page = open_page(p, demo_url)
        small = browser_ask(page, files["scene"], QUESTION, "id_pruner", 16)
        large = browser_ask(page, None, QUESTION, "id_pruner", 200)
        assert "kept 16 of 576" in small["status"] and "kept 200 of 576" in large["status"]
        assert "prompt tokens 23" in small["answer"] and "prompt tokens 207" in large["answer"]
        assert small["overlay"] != large["overlay"]
        upload(page, files["broken"])
        page.click("#ask")
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('could not be read')")
