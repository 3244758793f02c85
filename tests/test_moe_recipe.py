"""`tokencomp train moe-llava --smoke` on the shipped model: the upcycled model starts at the dense logits, the
top-u run trains exactly the chosen experts + routers (the rest bit-identical), the chosen experts are those
with the most routing mass, the random-u control trains as many experts drawn by its seed, and the exported model
loads in transformers as a Mixtral-text LLaVA; `--replay` mixes old-family sequences into the new task's
batches and leaves them as they were at 0."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.training.moe_partial import random_experts, top_experts
from tokencomp.training.recipes import moe_llava


def test_smoke_run_trains_only_the_chosen_experts_and_exports_a_mixtral_llava(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    subprocess.run([sys.executable, "-m", "tokencomp.cli", "train", "moe-llava", "--smoke", "--out", str(out),
                    "--work", str(work), "--train-scenes", "8", "--val-scenes", "2", "--card-questions", "2"],
                   check=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    (seed,) = results["seeds"]
    assert seed["upcycle_max_abs_logit_diff"] < 1e-4
    text = 1  # routing-mass group of question and answer tokens
    mass = torch.tensor(seed["mass_new"])[:, text]
    assert seed["chosen"] == top_experts(mass, 1).tolist()
    assert seed["random"] == random_experts(4, 4, 1, seed=0).tolist()
    layers, experts, width, inner = 4, 4, 128, 384  # the shipped LLM, 4 experts (smoke default)
    expert, router = 3 * width * inner, experts * width
    variants = seed["variants"]
    assert variants["moe-top-u"]["trainable"] == variants["moe-random-u"]["trainable"] == layers * (expert + router)
    assert variants["moe-all"]["trainable"] == layers * (experts * expert + router)
    assert all(v["frozen_bit_identical"] for v in variants.values())
    assert variants["moe-top-u"]["peak_step_bytes"] < variants["moe-all"]["peak_step_bytes"]
    (exported,) = work.glob("model-*")
    model = LlavaForConditionalGeneration.from_pretrained(exported)
    assert type(model.model.language_model).__name__ == "MixtralModel"
    assert {"report.md", "moe.png", "routing.png"} <= {p.name for p in out.iterdir()}


def test_replay_mixes_old_family_sequences_into_the_new_tasks_batches_and_zero_changes_nothing():
    tokenizer = AutoProcessor.from_pretrained("models/tokencomp-tiny-llava").tokenizer
    config = moe_llava.Config.smoke(batch=2, turns=3)
    feats = torch.zeros(40, 576, 2)  # only indexed: the questions, not the features, are under test

    def batches(**replay):
        return list(moe_llava._train_batches(tokenizer, feats, moe_llava._new_questions, config, 20, 5, **replay))

    def new_task(ids: torch.Tensor) -> list[bool]:
        return ["what size is" in tokenizer.decode(row).lower() for row in ids]

    plain, zero, mixed = batches(), batches(replay=0.0), batches(replay=0.5)
    for a, b in zip(plain, zero):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    kinds = np.array([flag for batch in mixed for flag in new_task(batch[0])])
    assert all(all(new_task(batch[0])) for batch in plain)
    assert 8 <= (~kinds).sum() <= 32, kinds  # 40 sequences, each old-family w.p. 1/2 (sd 3.2)
