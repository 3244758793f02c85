"""`tokencomp train moe-llava --smoke` on the shipped model: the upcycled model starts at the dense logits, the
top-u run trains exactly the chosen experts + routers (the rest bit-identical), the chosen experts are those
with the most routing mass, and the exported model loads in transformers as a Mixtral-text LLaVA."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from transformers import LlavaForConditionalGeneration

from tokencomp.training.moe_partial import top_experts


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
    layers, experts, width, inner = 4, 4, 128, 384  # the shipped LLM, 4 experts (smoke default)
    expert, router = 3 * width * inner, experts * width
    variants = seed["variants"]
    assert variants["moe-top-u"]["trainable"] == layers * (expert + router)
    assert variants["moe-all"]["trainable"] == layers * (experts * expert + router)
    assert all(v["frozen_bit_identical"] for v in variants.values())
    assert variants["moe-top-u"]["peak_step_bytes"] < variants["moe-all"]["peak_step_bytes"]
    model = LlavaForConditionalGeneration.from_pretrained(work / "model")
    assert type(model.model.language_model).__name__ == "MixtralModel"
    assert {"report.md", "moe.png", "routing.png"} <= {p.name for p in out.iterdir()}
