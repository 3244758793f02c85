"""Padding visual prompt (training/visual_prompt.py, serving/visual_prompt.py), the reprogramming task's source
classifier, and a smoke run of the visual-prompt recipe on the shipped model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tokencomp.serving.visual_prompt import frame_mask, load_visual_prompt
from tokencomp.training import reprogramming_task as task
from tokencomp.training.recipes import visual_prompt as recipe
from tokencomp.training.scenes import COLOURS
from tokencomp.training.visual_prompt import PaddingPrompt

MODEL = Path(__file__).resolve().parent.parent / "models" / "tokencomp-tiny-llava"


def test_frame_mask_hand_count():
    mask = frame_mask(10, 2)
    assert int(mask.sum()) == 100 - 36  # a 6 x 6 centre stays
    assert not mask[2:8, 2:8].any() and mask[0].all() and mask[:, 9].all()
    with pytest.raises(ValueError, match="got 5"):
        frame_mask(10, 5)


def test_prompt_leaves_centre_bitwise_untouched_and_changes_frame():
    prompt = PaddingPrompt(16, 3)
    with torch.no_grad():
        prompt.delta.normal_()
    x = torch.randn(2, 3, 16, 16)
    x[0, 0, 8, 8] = -0.0  # x + 0.0 would flip its sign bit
    out = prompt(x)
    centre = (slice(None), slice(None), slice(3, 13), slice(3, 13))
    assert torch.equal(out[centre].view(torch.int32), x[centre].view(torch.int32))
    frame = prompt.frame.expand_as(x)
    assert torch.equal(out[frame], (x + prompt.delta)[frame])
    out.sum().backward()
    assert torch.equal(prompt.delta.grad[:, ~prompt.frame], torch.zeros(3, 100))
    assert prompt.trainable() == 3 * (256 - 100)


def test_saved_prompt_serves_the_same_pixels(tmp_path):
    prompt = PaddingPrompt(12, 2)
    with torch.no_grad():
        prompt.delta.uniform_(-1, 1)
    served = load_visual_prompt(prompt.save(tmp_path / "p.safetensors"))
    x = torch.randn(3, 3, 12, 12)
    assert served.width == 2
    assert torch.equal(served.apply(x), prompt(x).detach())
    with pytest.raises(ValueError, match="pixel values are"):
        served.apply(torch.randn(1, 3, 10, 10))


def test_bad_prompt_file_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a visual prompt"):
        load_visual_prompt(tmp_path / "w.safetensors")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_visual_prompt(tmp_path / "notes.json")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_visual_prompt(tmp_path / "missing.safetensors")


def test_task_objects_stay_off_the_frame_and_labels_follow_palettes():
    for index in range(12):
        image, label = task.make_example("train", index)
        pixels = torch.from_numpy(np.asarray(image).astype(np.int64))
        off_background = (pixels != torch.tensor(task.BACKGROUND)).any(-1)
        assert not off_background[:task.MARGIN].any() and not off_background[:, -task.MARGIN:].any()
        colours = {tuple(c) for c in pixels[off_background].tolist()}
        assert colours and colours <= {COLOURS[c] for c in task.PALETTES[task.LABELS[label]]}


def test_source_classifier_equals_transformers_forward():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(MODEL).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    source = task.SourceClassifier(model, processor)
    x, _ = task.dataset(processor, "test", 2)
    ids = torch.cat([source.before, torch.full((576,), model.config.image_token_index), source.after])[None]
    with torch.no_grad():
        ref = model(input_ids=ids.repeat(2, 1), pixel_values=x).logits[:, -1]
        ours = source(x)
    assert torch.allclose(ours, ref, atol=1e-4), float((ours - ref).abs().max())


def test_recipe_smoke_writes_report_and_artefacts(tmp_path):
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    args = parser.parse_args(["--smoke", "--model", str(MODEL), "--out", str(tmp_path), "--mappings", "flm,otlm",
                              "--train", "3", "--test", "3"])
    assert recipe.main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["mapping"], r["seed"]) for r in results["runs"]] == [("flm", 0), ("otlm", 0)]
    assert all(0.0 <= r[k] <= 1.0 for r in results["runs"] for k in ("prompt", "no_prompt"))
    report = (tmp_path / "report.md").read_text()
    assert "| FLM |" in report and "| OTLM |" in report and (tmp_path / "accuracy.png").stat().st_size > 0
    served = load_visual_prompt(tmp_path / "otlm_prompt.safetensors")
    assert served.width == recipe.DEFAULTS["width"] and served.prompt.abs().sum() > 0  # it was trained
    label_map = json.loads((tmp_path / "otlm_label_map.json").read_text())
    assert label_map["labels"] == list(task.LABELS) and label_map["mapping"] == "otlm"


def test_recipe_rejects_unknown_mapping(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    recipe.add_arguments(parser)
    assert recipe.main(parser.parse_args(["--out", str(tmp_path), "--mappings", "flm,xlm"])) == 2
    assert "xlm" in capsys.readouterr().err


def test_server_prompt_reads_the_hf_override(tmp_path):
    from types import SimpleNamespace

    from tokencomp.serving.visual_prompt import PROMPT_KEY, server_prompt

    prompt = PaddingPrompt(8, 1)
    with torch.no_grad():
        prompt.delta.fill_(0.5)
    path = prompt.save(tmp_path / "p.safetensors")
    assert server_prompt(SimpleNamespace()) is None
    served = server_prompt(SimpleNamespace(**{PROMPT_KEY: str(path)}))
    x = torch.zeros(1, 3, 8, 8)
    assert float(served.apply(x).sum()) == 0.5 * 3 * (64 - 36)


def test_eval_split_is_the_synthetic_layout(tmp_path):
    from tokencomp.eval.tasks import load_questions_json

    task.write_eval_split("test", 3, tmp_path)
    samples = load_questions_json(tmp_path, None)
    assert len(samples) == 3
    for i, sample in enumerate(samples):
        assert sample.answers == (task.LABELS[task.make_example("test", i)[1]],)
        assert sample.question == task.QUESTION and sample.image.is_file()
