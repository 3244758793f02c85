"""`tokencomp train tiny-llava --smoke`: end to end in seconds, a checkpoint transformers loads, resumable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.serving.hf_reference import answer
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes

CLI = [sys.executable, "-m", "tokencomp.cli", "train", "tiny-llava"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run([*CLI, "--smoke", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_smoke_checkpoint_loads_and_answers_in_transformers(smoke_run):
    model_dir = smoke_run / "model"
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    scene = scenes.make_scene("test", 0)
    result = answer(model, processor, scenes.render(scene), scene.questions[0]["question"], Spec(), 4)
    assert result.prompt_tokens > 576 and isinstance(result.text, str)
    keys = set(json.loads((model_dir / "config.json").read_text()))
    assert {"vision_config", "text_config", "image_token_index"} <= keys


def test_rerun_resumes_instead_of_retraining(smoke_run):
    log = smoke_run / "log.jsonl"
    before = [json.loads(line)["stage"] for line in log.read_text().splitlines()]
    proc = subprocess.run([*CLI, "--smoke", "--out", str(smoke_run)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = [json.loads(line)["stage"] for line in log.read_text().splitlines()]
    assert after[len(before):] == ["done"], "finished tower and LLM stages must not run again"


def test_every_epoch_logs_validation_accuracy_per_family(smoke_run):
    records = [json.loads(line) for line in (smoke_run / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["stage"] == "llm"]
    families = {q["family"] for i in range(16) for q in scenes.make_scene("val", i).questions}
    assert [r["epoch"] for r in epochs] == [1, 2]
    for epoch in epochs:
        assert set(epoch["val"]) == families | {"overall"}
        assert all(0.0 <= v <= 1.0 for v in epoch["val"].values())
    assert epochs[0]["keep_background"] < 1.0 == epochs[-1]["keep_background"], "the last epoch sees every patch"


@pytest.mark.parametrize("args, message", [(["--llm-epochs", "0"], "--llm-epochs must be > 0"),
                                           (["--llm-lr=-1e-3"], "--llm-lr must be > 0"),
                                           (["--optimizer", "sgdx"], "unknown optimizer 'sgdx'"),
                                           (["--device", "nope"], "--device 'nope' is not usable")])
def test_bad_arguments_exit_with_one_line(tmp_path, args, message):
    proc = subprocess.run([*CLI, "--smoke", "--out", str(tmp_path), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tokencomp train: error: ") and message in line
