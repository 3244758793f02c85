"""Module-wise distillation (training/distill.py) and a smoke run of the OPTIMA recipe (training/recipes/optima.py),
on the shipped model as teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.serving.hf_reference import answer
from tokencomp.serving.spec import Spec
from tokencomp.training import distill, scenes
from tokencomp.training.recipes import optima
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence

MODEL = Path(__file__).resolve().parent.parent / "models" / "tokencomp-tiny-llava"


@pytest.fixture(scope="module")
def teacher():
    return LlavaForConditionalGeneration.from_pretrained(MODEL).eval()


@pytest.fixture(scope="module")
def batch():
    """Two scenes' question sequences over random stand-in tower features (no tower needed here)."""
    tokenizer = AutoProcessor.from_pretrained(MODEL).tokenizer
    rng = np.random.default_rng(0)
    rows = [qa_sequence(tokenizer, scenes.make_scene("val", i).questions[:3], 576, rng) for i in range(2)]
    ids, labels, mask, positions, _ = pad_batch(rows, tokenizer.pad_token_id)
    feats = torch.randn(2 * 576, 128, generator=torch.Generator().manual_seed(0))
    return ids, labels, mask, positions, feats, ids != tokenizer.pad_token_id


def _losses(student, teacher, batch, layer_map):
    ids, labels, mask, positions, feats, valid = batch
    with torch.no_grad():
        s, t = (distill.forward(m, ids, mask, positions, feats) for m in (student, teacher))
    losses = distill.module_losses(s, t, layer_map, valid)
    losses["kd"] = distill.logit_kd(s.logits, t.logits, labels)
    return {k: float(v) for k, v in losses.items()}


def test_losses_are_zero_for_a_copy_and_only_downstream_of_a_change(teacher, batch):
    copy = distill.build_student(teacher, 4)
    layer_map = distill.uniform_layer_map(4, 4)
    assert layer_map == [0, 1, 2, 3]
    assert all(v == 0.0 for v in _losses(copy, teacher, batch, layer_map).values())
    with torch.no_grad():
        copy.model.language_model.layers[1].mlp.down_proj.weight.add_(0.05)
    changed = _losses(copy, teacher, batch, layer_map)
    assert changed["projector"] == 0.0 and changed["llm.0"] == 0.0  # upstream of block 1: untouched
    assert all(changed[k] > 1e-6 for k in ("llm.1", "llm.2", "llm.3", "kd"))


def test_two_block_student_copies_first_and_last_blocks(teacher, batch):
    student = distill.build_student(teacher, 2)
    layer_map = distill.uniform_layer_map(2, 4)
    assert layer_map == [0, 3] and student.config.text_config.num_hidden_layers == 2
    assert torch.equal(student.model.language_model.layers[1].mlp.up_proj.weight,
                       teacher.model.language_model.layers[3].mlp.up_proj.weight)
    losses = _losses(student, teacher, batch, layer_map)
    # Projector and block 0 are copies that see the same inputs; block 1 sees block 0's output, not block 2's.
    assert losses["projector"] == 0.0 and losses["llm.0"] == 0.0
    assert losses["llm.1"] > 1e-4


def test_relative_mse_and_kd_against_hand_computation():
    torch.manual_seed(0)
    logits_s, logits_t = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    labels = torch.tensor([[distill.IGNORE, 7, distill.IGNORE, 3]])  # positions 0 and 2 predict answer tokens
    expected = 0.0
    for pos in (0, 2):
        p = torch.softmax(logits_t[0, pos] / 2, -1)
        q = torch.softmax(logits_s[0, pos] / 2, -1)
        expected += float((p * (p.log() - q.log())).sum()) / 2 * 4  # mean over the 2 positions, times T^2
    assert float(distill.logit_kd(logits_s, logits_t, labels, temperature=2.0)) == pytest.approx(expected, rel=1e-5)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert float(distill._relative_mse(a, b)) == pytest.approx(((4 + 4) / 2) / ((9 + 16) / 2))


def test_layer_map_and_arms():
    assert distill.uniform_layer_map(3, 4) == [0, 2, 3] and distill.uniform_layer_map(1, 4) == [0]
    with pytest.raises(ValueError, match="got 5"):
        distill.uniform_layer_map(5, 4)
    modules = distill.module_names(2)
    assert optima.arm_list(modules, "single") == [("projector",), ("llm.0",), ("llm.1",)]
    assert len(optima.arm_list(modules, "subsets")) == 7


def test_smoke_run_writes_a_loadable_student(tmp_path):
    parser = argparse.ArgumentParser()
    optima.add_arguments(parser)
    args = parser.parse_args(["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                              "--teacher", str(MODEL)])
    results = optima.run_recipe(optima.config_from_args(args), "test")
    assert {r["method"] for r in results["runs"]} == set(optima.METHODS)
    run = next(r for r in results["runs"] if r["method"] == "optima")
    assert len(run["log"]["rewards"]) == len(run["log"]["arms"]) == 2  # one arm and one reward per episode
    assert all(r["log"]["teacher_forwards"] == 2 for r in results["runs"] if r["method"] != "task")
    assert (tmp_path / "out" / "optima.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["best"]["method"] in optima.METHODS
    path = Path(results["best"]["path"])
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.text_config.num_hidden_layers == 2
    saved = torch.load(tmp_path / "work" / f"student_{results['best']['method']}_0.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    reply = answer(model, processor, scenes.render(scenes.make_scene("test", 0)), "What colour is the circle?", Spec())
    assert reply.prompt_tokens > 576


def test_bad_arguments_are_refused(tmp_path):
    parser = argparse.ArgumentParser()
    optima.add_arguments(parser)
    for argv, message in ((["--steps", "0"], "--steps"), (["--teacher", str(tmp_path)], "--teacher"),
                          (["--beta", "-1"], "--beta")):
        with pytest.raises(ValueError, match=message):
            optima.config_from_args(parser.parse_args(["--out", str(tmp_path), *argv]))


def test_paired_by_seed_matches_a_hand_computed_t_interval():
    # optima minus task per seed: +0.02, +0.04, +0.00 -> mean 0.02, sd 0.02, half width t(0.975, 2) * 0.02 / sqrt 3
    accuracy = {("optima", 0): 0.52, ("optima", 1): 0.54, ("optima", 2): 0.50,
                ("task", 0): 0.50, ("task", 1): 0.50, ("task", 2): 0.50, ("kd", 0): 0.40}
    runs = [{"method": m, "seed": s, "test": {"overall": a}} for (m, s), a in accuracy.items()]
    got = optima.paired_by_seed(runs, "optima", "task")
    assert got["seeds"] == [0, 1, 2]
    assert got["diffs"] == pytest.approx([0.02, 0.04, 0.0])
    half = 4.302652729911275 * 0.02 / 3 ** 0.5
    assert got["mean"] == pytest.approx(0.02)
    assert got["interval"] == pytest.approx((0.02 - half, 0.02 + half))
    assert optima.paired_by_seed(runs, "optima", "kd") is None  # one shared seed: no interval
