"""The sparse-llava recipe's smoke run on a tiny random LLaVA of the shipped architecture (scene tokenizer,
CLIP tower, LLaMA decoder): every sparsified tensor of the saved checkpoint holds exactly its budget's zeros
(+0.0), transformers loads it with every key, the card states each tensor's zeros, the one-shot magnitude run
keeps its magnitude mask while RigL moves its mask, the frozen tower is untouched, and a sparse checkpoint is
served by a real `tokencomp serve` process as it is, with greedy answers and prompt lengths equal to
transformers' on the same checkpoint, unpruned and under ID-Pruner."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import openai
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.benchmarks.load import scene_requests
from tokencomp.cli import main as cli_main
from tokencomp.serving.hf_reference import answer
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes
from tokencomp.training.llava_hf import save_llava_hf
from tokencomp.training.recipes import sparse_llava
from tokencomp.training.recipes.tiny_llava_model import build_model
from tokencomp.training.sparsifier import layer_budgets, top_k_mask
from tokencomp.training.tokenizer import build_processor, build_tokenizer

GRID = {"bidst-90": 0.9, "rigl-70": 0.7, "magnitude-50": 0.5, "dense-0": 0.0}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(dense model folder, run folder) after `tokencomp train sparse-llava --smoke` on a tiny LLaVA."""
    root = tmp_path_factory.mktemp("sparse_llava")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                        pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                        eos_id=tokenizer.eos_token_id, vision_width=32, vision_layers=2, text_width=64,
                        text_layers=2)
    dense = save_llava_hf(model.eval(), root / "dense", build_processor(tokenizer))
    out = root / "runs"
    assert cli_main(["train", "sparse-llava", "--smoke", "--model", str(dense), "--out", str(out),
                     "--grid", *GRID]) == 0
    return dense, out


def _masked_keys(path) -> set[str]:
    return set(sparse_llava.masked_weights(LlavaForConditionalGeneration.from_pretrained(path)))


@pytest.mark.parametrize("name", [n for n, s in GRID.items() if s > 0])
def test_every_sparsified_tensor_has_exactly_its_budget_of_zeros(smoke, name):
    dense, out = smoke
    state = load_file(out / name / "model.safetensors")
    keys = _masked_keys(dense)
    # the decoder's 7 linear layers per block (2 blocks) and the projector's 2
    assert len(keys) == 7 * 2 + 2
    budgets = layer_budgets({k: state[k].shape for k in keys}, 1 - GRID[name], "erk")
    for key in keys:
        tensor = state[key]
        zeros = tensor == 0
        assert int(zeros.sum()) == tensor.numel() - budgets[key], key
        assert not torch.signbit(tensor[zeros]).any(), f"{key} holds -0.0"
    total = sum(state[k].numel() for k in keys)
    assert sum(int((state[k] == 0).sum()) for k in keys) == pytest.approx(GRID[name] * total, abs=len(keys))


def test_dense_control_stays_dense_and_tower_is_frozen(smoke):
    dense, out = smoke
    before = load_file(dense / "model.safetensors")
    for name in GRID:
        after = load_file(out / name / "model.safetensors")
        assert after.keys() == before.keys()
        for key in (k for k in before if k.startswith("vision_tower.")):
            assert torch.equal(after[key], before[key]), key
    state = load_file(out / "dense-0" / "model.safetensors")
    assert all(int((state[k] == 0).sum()) == 0 for k in _masked_keys(dense))


def test_magnitude_keeps_its_one_shot_mask_and_rigl_moves_its_mask(smoke):
    dense, out = smoke
    before = load_file(dense / "model.safetensors")
    keys = _masked_keys(dense)
    moved = 0
    for name in ("magnitude-50", "rigl-70"):
        state = load_file(out / name / "model.safetensors")
        budgets = layer_budgets({k: before[k].shape for k in keys}, 1 - GRID[name], "erk")
        for key in keys:
            one_shot = top_k_mask(before[key].abs(), budgets[key])
            if name == "magnitude-50":
                assert torch.equal(state[key] != 0, one_shot), key
            else:
                moved += int(((state[key] != 0) & ~one_shot).sum())
    assert moved > 0  # RigL's update at step 2 of 4 grew weights outside the one-shot mask


def test_transformers_loads_every_key(smoke):
    _, out = smoke
    for name in GRID:
        model, info = LlavaForConditionalGeneration.from_pretrained(out / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        saved = load_file(out / name / "model.safetensors")
        q = "language_model.model.layers.0.self_attn.q_proj.weight"
        assert torch.equal(model.model.language_model.layers[0].self_attn.q_proj.weight, saved[q])


def test_card_states_every_tensors_sparsity(smoke):
    dense, out = smoke
    keys = _masked_keys(dense)
    for name in GRID:
        card = (out / name / "README.md").read_text()
        state = load_file(out / name / "model.safetensors")
        for key, tensor in state.items():
            zeros = int((tensor == 0).sum())
            shown = f"**{key}**" if key in keys else key
            row = (f"| {shown} | {'x'.join(map(str, tensor.shape))} | {zeros} | "
                   f"{100 * zeros / tensor.numel():.2f} |")
            assert row in card, row
        masked = sum(state[k].numel() for k in keys)
        stated = re.search(r"Masked weights: (\d+), zeros (\d+)", card)
        assert (int(stated[1]), int(stated[2])) == (masked, sum(int((state[k] == 0).sum()) for k in keys))


def test_bad_grid_item_is_one_clear_error():
    args = argparse.Namespace(grid=["bidst-ninety"], methods=[], sparsities=[])
    with pytest.raises(SystemExit, match="bidst-ninety"):
        sparse_llava.plan(args)
    args.grid = ["rigl-90", "dense-0"]
    assert sparse_llava.plan(args) == [("rigl", 0.9), ("dense", 0.0)]
    assert math.isclose(sparse_llava.plan(argparse.Namespace(grid=None, methods=["bidst", "dense"],
                                                             sparsities=[0.5]))[0][1], 0.5)


def test_a_sparse_checkpoint_is_served_as_is_with_transformers_greedy_answers(smoke, tmp_path):
    # Only answers and prompt lengths are compared: vLLM's CPU linear layers pack each weight into oneDNN's opaque
    # layout and drop the dense tensor, so the engine's copy of the zeros cannot be read back (its
    # `save_sharded_state` returns no linear weights on CPU).
    _, out = smoke
    path = out / "rigl-70"
    config = ServerConfig(model=str(path), port=free_port(), served_model_name="llava")
    with running(config, log=tmp_path / "server.log") as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path)
        for index, messages in enumerate(scene_requests(3)):
            question = messages[0]["content"][1]["text"]
            image = scenes.render(scenes.make_scene("test", index))
            for spec in (Spec(), Spec("id_pruner", 16)):
                body = {"method": spec.method, **({"budget": spec.budget} if spec.budget else {})}
                reply = client.chat.completions.create(
                    model="llava", messages=messages, max_tokens=4, temperature=0,
                    extra_body={"mm_processor_kwargs": {"tokencomp": body}})
                expected = answer(model, processor, image, question, spec, max_new_tokens=4)
                assert reply.choices[0].message.content.strip() == expected.text.strip(), (index, spec)
                assert reply.usage.prompt_tokens == expected.prompt_tokens


def _write_log(folder, setting: str, scores: list[float], groups: list[str], answers: list[str]) -> None:
    (folder / "synthetic").mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "score": s, "cluster": f"scene{i // 2}", "status": "ok", "group": g,
             "answers": [a]} for i, (s, g, a) in enumerate(zip(scores, groups, answers, strict=True))]
    (folder / "synthetic" / f"{setting}-abc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_retention_and_retention_above_chance_match_hand_computation(tmp_path):
    # 8 questions in 4 scenes; family "exist" answers yes, yes, no, yes (best constant "yes": 3 of 4), family
    # "colour" answers red x4 (best constant 4 of 4): chance = 7 / 8
    groups = ["exist"] * 4 + ["colour"] * 4
    answers = ["yes", "yes", "no", "yes", "red", "red", "red", "red"]
    records = [{"group": g, "answers": [a]} for g, a in zip(groups, answers, strict=True)]
    np.testing.assert_array_equal(sparse_llava.constant_scores(records), [1, 1, 0, 1, 1, 1, 1, 1])
    model, shipped = tmp_path / "model", tmp_path / "shipped"
    _write_log(model, "none", [1, 1, 1, 1, 1, 1, 1, 1], groups, answers)
    _write_log(model, "id_pruner@32", [1, 1, 0, 1, 1, 1, 1, 1], groups, answers)
    _write_log(shipped, "none", [1, 1, 1, 1, 1, 1, 1, 1], groups, answers)
    _write_log(shipped, "id_pruner@32", [1, 0, 0, 1, 1, 1, 1, 0], groups, answers)
    out = sparse_llava.retention(model, shipped, 32)
    assert out["questions"] == 8 and out["chance"] == pytest.approx(7 / 8)
    assert out["retention"][0] == pytest.approx(7 / 8)
    assert out["vs_shipped"][0] == pytest.approx(7 / 8 - 5 / 8)
    assert out["above_chance"][0] == pytest.approx((7 / 8 - 7 / 8) / (1 - 7 / 8))
    assert out["above_vs_shipped"][0] == pytest.approx(0 - (5 / 8 - 7 / 8) / (1 - 7 / 8))
    # (the above-chance intervals are undefined here: a replicate drawing only scene 0 has unpruned = chance)
    for key in ("retention", "vs_shipped"):
        assert out[key][1] <= out[key][0] <= out[key][2]
