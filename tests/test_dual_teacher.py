"""Dual-teacher graph proximity distillation (training/graph_distill.py, training/dual_teacher.py) against hand
computation, the recipe's task data (held-out combinations never trained, reference turns never supervised), and
`tokencomp train dual-teacher --smoke` end to end on the shipped model."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training import scenes
from tokencomp.training.dual_teacher import confidence, dual_teacher_loss, weights
from tokencomp.training.graph_distill import graph_kl, proximity_loss
from tokencomp.training.llava_loss import IGNORE
from tokencomp.training.recipes import dual_teacher_tasks as tasks

SHIPPED = "models/tokencomp-tiny-llava"


def _hand_graph(rows: list[list[float]], cols: list[list[float]], tau: float) -> list[list[float]]:
    """Row-softmax of cosine / tau, element by element."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    graph = []
    for a in rows:
        e = [math.exp(cos(a, b) / tau) for b in cols]
        graph.append([x / sum(e) for x in e])
    return graph


def _hand_kl(p: list[list[float]], q: list[list[float]]) -> list[float]:
    return [sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]


TEACHER_IMAGE = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
TEACHER_TEXT = [[1.0, 1.0], [1.0, -1.0], [-2.0, 0.5]]
STUDENT_IMAGE = [[1.0, 0.2], [0.0, 1.0], [1.0, 1.0]]
STUDENT_TEXT = [[0.5, 1.0], [1.0, 0.0], [-1.0, -1.0]]


def test_graph_loss_is_exactly_zero_for_the_teacher_itself_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    same = proximity_loss((image, text), (image.clone(), text.clone()), tau=0.1)
    assert torch.equal(same, torch.zeros(6))
    moved = proximity_loss((image, text), (image + 0.3 * torch.randn(6, 16, generator=g), text), tau=0.1)
    assert (moved > 0).all()  # every row of the image and pair graphs moved
    # Only relations count: a rescaled student (same cosines) costs nothing; widths may differ.
    assert proximity_loss((image, text), (3 * image, 0.5 * text), tau=0.1).abs().max() < 1e-6
    wide = torch.cat([image, torch.zeros(6, 8)], dim=1), torch.cat([text, torch.zeros(6, 8)], dim=1)
    assert proximity_loss((image, text), wide, tau=0.1).abs().max() < 1e-6


def test_graph_loss_equals_hand_computation_on_three_samples():
    tau = 0.5
    t = torch.tensor(TEACHER_IMAGE), torch.tensor(TEACHER_TEXT)
    s = torch.tensor(STUDENT_IMAGE), torch.tensor(STUDENT_TEXT)
    expected = {
        "image": _hand_kl(_hand_graph(TEACHER_IMAGE, TEACHER_IMAGE, tau), _hand_graph(STUDENT_IMAGE, STUDENT_IMAGE, tau)),
        "text": _hand_kl(_hand_graph(TEACHER_TEXT, TEACHER_TEXT, tau), _hand_graph(STUDENT_TEXT, STUDENT_TEXT, tau)),
        "pair": _hand_kl(_hand_graph(TEACHER_IMAGE, TEACHER_TEXT, tau), _hand_graph(STUDENT_IMAGE, STUDENT_TEXT, tau)),
    }
    for graph, values in expected.items():
        got = proximity_loss(t, s, tau, graphs=(graph,))
        assert torch.allclose(got, torch.tensor(values), atol=1e-6), graph
    total = [sum(v[i] for v in expected.values()) for i in range(3)]
    assert torch.allclose(proximity_loss(t, s, tau), torch.tensor(total), atol=1e-6)
    assert torch.allclose(graph_kl(t[0], t[1], s[0], s[1], tau), torch.tensor(expected["pair"]), atol=1e-6)


def test_graph_loss_rejects_bad_input():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="tau"):
        proximity_loss((x, x), (x, x), tau=0.0)
    with pytest.raises(ValueError, match="graphs"):
        proximity_loss((x, x), (x, x), tau=0.1, graphs=("audio",))
    with pytest.raises(ValueError, match="same samples"):
        graph_kl(x, x, torch.randn(2, 4), x, 0.1)


def test_teacher_weights_lie_in_unit_interval_sum_to_one_and_follow_confidence():
    conf0, conf1 = torch.tensor([0.9, 0.2, 0.5, 1.0]), torch.tensor([0.3, 0.6, 0.5, 1e-3])
    for mode in ("confidence", "equal", "t0"):
        for temperature in (0.5, 1.0, 3.0):
            w = weights(conf0, conf1, mode, temperature)
            assert w.shape == (4, 2)
            assert ((w >= 0) & (w <= 1)).all()
            assert torch.allclose(w.sum(-1), torch.ones(4))
    w = weights(conf0, conf1, "confidence", 1.0)
    assert torch.allclose(w[:, 0], conf0 / (conf0 + conf1))  # w0 = c0 / (c0 + c1) at temperature 1
    sharp = weights(conf0, conf1, "confidence", 0.5)
    assert torch.allclose(sharp[:, 0], conf0 ** 2 / (conf0 ** 2 + conf1 ** 2))
    assert torch.equal(weights(conf0, conf1, "equal"), torch.full((4, 2), 0.5))
    assert torch.equal(weights(conf0, conf1, "t0")[:, 0], torch.ones(4))
    assert torch.equal(weights(conf0, conf0, "confidence"), torch.full((4, 2), 0.5))  # T1 = T0: halves exactly
    for bad in ({"mode": "both"}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            weights(conf0, conf1, **bad)


def test_confidence_and_weighted_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(confidence(logits), torch.tensor([math.exp(2) / (math.exp(2) + 2), 1 / 3]))
    loss0, loss1 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 0.0, 1.0])
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
    expected = ((0.25 * 1 + 0.75 * 4) + 2.0 + (0.5 * 3 + 0.5 * 1)) / 3
    assert dual_teacher_loss(loss0, loss1, w).item() == pytest.approx(expected)


def test_task_data_keeps_held_out_combinations_out_and_reference_turns_unsupervised():
    processor = AutoProcessor.from_pretrained(SHIPPED)
    tokenizer, rng, pick = processor.tokenizer, np.random.default_rng(0), random.Random(0)
    seen_held_out = 0
    for index in range(60):
        scene = scenes.make_scene("train", index)
        for task in tasks.TASKS:
            every = tasks.task_questions(task, scene)
            seen_held_out += sum(q["held_out"] for q in every)
            for q in tasks.training_turns(task, scene, pick, 10):
                named = next(o for o in scene.objects if o.name in q["question"])
                assert (named.colour, named.shape) not in tasks.HELD_OUT
    assert seen_held_out > 0  # the held-out combinations do occur in scenes: only training skips them
    scene = scenes.make_scene("train", 3)
    side = tasks.task_questions("side", scene)
    assert all(q["answer"] == ("left" if next(o for o in scene.objects if o.name in q["question"]).x < 168
                               else "right") for q in side)
    labelled = [tasks.training_turns("side", scene, pick, 2)]
    reference = [tasks.reference_turns(("size_name",), scene, pick, 4)]
    assert len(reference[0]) == 4 and all(q["answer"] == "" for q in reference[0])
    feats = torch.zeros(4, 576, 128)
    batch = tasks.make_batch(tokenizer, feats, [3], labelled, reference, rng)
    owners, labels = batch["owners"][0], batch["labels"][0]
    assert batch["trained"].tolist() == [True] * len(labelled[0]) + [False] * 4
    for q, (row, pos) in enumerate(batch["ask"].tolist()):
        assert owners[pos + 1] == q and owners[pos] != q  # the position before the turn's first answer token
        supervised = (labels[owners == q] != IGNORE).all()
        assert bool(supervised) == (q < len(labelled[0]))


def test_smoke_run_writes_its_report_and_a_loadable_model(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "-m", "tokencomp.cli", "train", "dual-teacher", "--smoke", "--out", str(out),
               "--work", str(work), "--train-scenes", "4", "--val-scenes", "2", "--steps", "1", "--turns", "1",
               "--ref-turns", "1", "--serve-scenes", "1", "--variants", "finetune,dual-reweight"]
    subprocess.run(command, check=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["runs"]] == ["finetune", "dual-reweight"]
    for run in results["runs"]:
        assert [s["task"] for s in run["stages"]] == list(tasks.TASKS)
        assert all(0 <= v <= 1 for s in run["stages"] for v in s["scores"].values())
    finetune, method = results["runs"]
    assert math.isnan(finetune["stages"][0]["distil_loss"]) and method["stages"][1]["distil_loss"] >= 0
    assert method["stages"][0]["w0_task_turns"] == 0.5  # first task: T1 = T0
    assert "| dual-reweight |" in (out / "report.md").read_text() and (out / "dual_teacher.png").exists()
    shipped = load_file(f"{SHIPPED}/model.safetensors")
    saved = load_file(work / "model" / "model.safetensors")
    assert saved.keys() == shipped.keys()
    tower = [k for k in shipped if k.startswith("vision_tower.")]
    assert all(torch.equal(saved[k], shipped[k]) for k in tower)  # frozen: its features were cached
    assert any(not torch.equal(saved[k], shipped[k]) for k in shipped if k.startswith("language_model."))
    LlavaForConditionalGeneration.from_pretrained(work / "model")
    assert len(json.loads((work / "newtasks_test" / "questions.json").read_text())) > 0
    again = subprocess.run(command, check=True, timeout=600, capture_output=True, text=True)
    assert "seed 0" not in again.stderr  # resumed from its JSON: nothing trained again
