"""The shipped checkpoint: loads in transformers, re-scores the accuracy its card states on the fixed 200-question
test sample, and gives the same greedy answers in vLLM's offline engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training import scenes
from tokencomp.training.model_card import SAMPLE, fixed_questions, normalise, score

MODEL = Path(__file__).resolve().parent.parent / "models" / "tokencomp-tiny-llava"


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((MODEL / "eval.json").read_text())


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return fixed_questions(SAMPLE)


@pytest.fixture(scope="module")
def transformers_predictions(rows):
    model = LlavaForConditionalGeneration.from_pretrained(MODEL).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    accuracy, predictions = score(model, processor, rows, lambda r: scenes.render(scenes.make_scene("test", r["scene"])))
    return accuracy, predictions


def test_checkpoint_is_small_and_in_llava_hf_layout():
    assert (MODEL / "model.safetensors").stat().st_size < 30 * 2**20
    from safetensors import safe_open

    with safe_open(MODEL / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.") for k in keys)
    assert any(k.startswith("language_model.model.layers.") for k in keys)


def test_transformers_accuracy_matches_the_card(card, transformers_predictions):
    accuracy, _ = transformers_predictions
    assert abs(accuracy["overall"] - card["sample_200_accuracy"]) <= 0.03


def test_vllm_offline_gives_the_same_greedy_answers(rows, transformers_predictions):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(MODEL), dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1})
    prompts = [{"prompt": f"USER: <image> {r['question']} ASSISTANT:",
                "multi_modal_data": {"image": scenes.render(scenes.make_scene("test", r["scene"]))}} for r in rows]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    _, expected = transformers_predictions
    served = [o.outputs[0].text for o in outputs]
    mismatches = [(r["question"], s, e) for r, s, e in zip(rows, served, expected) if normalise(s) != normalise(e)]
    assert not mismatches, mismatches[:5]
