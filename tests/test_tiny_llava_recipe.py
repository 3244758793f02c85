"""`tokencomp train tiny-llava --smoke`: end to end in seconds, a checkpoint transformers loads, resumable."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.serving.hf_reference import answer
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes
from tokencomp.training.llava_loss import lm_loss
from tokencomp.training.recipes import tiny_llava
from tokencomp.training.recipes import tiny_llava_state_diff as state_diff
from tokencomp.training.recipes.tiny_llava_model import build_model
from tokencomp.training.recipes.tiny_llava_probe import LayerProbe
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence
from tokencomp.training.recipes.tiny_llava_targets import letter_targets, mention_targets, relation_targets
from tokencomp.training.tokenizer import build_tokenizer

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


def test_every_phase_logs_validation_accuracy_per_family(smoke_run):
    records = [json.loads(line) for line in (smoke_run / "log.jsonl").read_text().splitlines()]
    phases = [r for r in records if r["stage"] == "llm"]
    families = {q["family"] for i in range(16) for q in scenes.make_scene("val", i).questions}
    assert [r["phase"] for r in phases] == [p.name for p in tiny_llava.CURRICULUM]
    for phase in phases:
        assert set(phase["val"]) == families | {"overall"}
        assert all(0.0 <= v <= 1.0 for v in phase["val"].values())


def test_curriculum_grows_to_whole_busy_images():
    phases = tiny_llava.CURRICULUM
    main = [p for p in phases if p.stage == "main"]
    assert main == list(phases[:len(main)]), "the main stage comes first"
    assert main[0].max_objects == 1 and main[-1].max_objects == scenes.MAX_OBJECTS
    assert [p.max_objects for p in main] == sorted(p.max_objects for p in main)
    assert [p.keep_background for p in main] == sorted(p.keep_background for p in main)
    assert phases[-1].max_objects == scenes.MAX_OBJECTS and phases[-1].keep_background == 1.0, \
        "the last phase shows every patch of any scene, as at test time"
    assert tiny_llava.phase_steps(tiny_llava.Config(llm_scale=0.5)) == [round(p.steps / 2) for p in phases]
    rng = np.random.default_rng(0)
    for index in range(20):
        scene = scenes.make_scene("train", index)
        labels = scenes.patch_labels(scene)
        kept = set(tiny_llava._kept_patches(scene, 0.0, rng).tolist())
        assert kept == set(np.flatnonzero((labels["colour"] > 0) | (labels["letter"] > 0)).tolist())
        assert len(tiny_llava._kept_patches(scene, 1.0, rng)) == scenes.GRID * scenes.GRID


def test_each_stage_warms_up_and_decays_on_its_own_schedule():
    config = tiny_llava.Config(llm_lr=1e-3)
    steps = tiny_llava.phase_steps(config)
    stages = [p.stage for p in tiny_llava.CURRICULUM]
    main = [i for i, s in enumerate(stages) if s == "main"]
    compare = [i for i, s in enumerate(stages) if s == "compare"]
    assert main == list(range(len(main))) and compare and tiny_llava.CURRICULUM[compare[0]].probe
    total = sum(steps[i] for i in main)
    # the main stage is one cosine across its phases: step 10 of phase 1 is global step steps[0] + 10
    at = steps[0] + 10
    assert tiny_llava.learning_rate(config, 1, 10) == pytest.approx(
        1e-3 * min(1, (at + 1) / 100) * 0.5 * (1 + math.cos(math.pi * at / total)))
    assert tiny_llava.learning_rate(config, 0, 0) == pytest.approx(1e-5)
    assert tiny_llava.learning_rate(config, main[-1], steps[main[-1]] - 1) < 1e-6
    # the compare stage restarts: warm-up again, peak at half the rate, back to zero at its end
    assert tiny_llava.learning_rate(config, compare[0], 0) == pytest.approx(0.5e-5)
    assert tiny_llava.learning_rate(config, compare[0], 99) == pytest.approx(0.5e-3, rel=0.01)
    assert tiny_llava.learning_rate(config, compare[-1], steps[compare[-1]] - 1) < 1e-6
    # a stage shorter than 1000 steps warms up over a tenth of them: the last (settle) stage of one phase
    (settle,) = [i for i, s in enumerate(stages) if s == stages[-1]]
    assert settle == len(stages) - 1 and steps[settle] < 1000
    assert tiny_llava.learning_rate(config, settle, 0) == pytest.approx(0.5e-3 / (steps[settle] // 10 + 1))
    peak = steps[settle] // 10
    assert tiny_llava.learning_rate(config, settle, peak) == pytest.approx(
        0.5e-3 * 0.5 * (1 + math.cos(math.pi * peak / steps[settle])))


@torch.no_grad()
def test_packed_turns_see_only_the_image_and_their_own_question():
    """Every turn of a packed training sequence gets exactly the logits of that question asked alone after the
    image (a plain causal forward, as at inference): no turn reads another turn's answer."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    model = build_model(len(tokenizer), image_token_id=image_id, pad_id=tokenizer.pad_token_id,
                        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id).eval()
    questions = scenes.make_scene("val", 3).questions
    feats = torch.randn(7, model.config.vision_config.hidden_size)
    rows = [qa_sequence(tokenizer, qs, 7, np.random.default_rng(0)) for qs in (questions, questions[:1])]
    ids, labels, mask, positions, owners = pad_batch(rows, tokenizer.pad_token_id)
    _, ok, _ = lm_loss(model, ids, labels, mask, positions, torch.cat([feats, feats]))
    embed, project = model.get_input_embeddings(), model.model.multi_modal_projector
    inputs = embed(ids.masked_fill(ids == image_id, 0)).masked_scatter((ids == image_id)[..., None],
                                                                      project(torch.cat([feats, feats])))
    packed = model.lm_head(model.model.language_model(inputs_embeds=inputs, attention_mask=mask,
                                                      position_ids=positions).last_hidden_state)
    for q, question in enumerate(questions):
        text = tokenizer("USER: " + question["question"] + " ASSISTANT: " + question["answer"],
                         add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        alone = torch.tensor([text[:2] + [image_id] * 7 + text[2:]])
        x = embed(alone.masked_fill(alone == image_id, 0)).masked_scatter((alone == image_id)[..., None], project(feats))
        logits = model.lm_head(model.model.language_model(inputs_embeds=x).last_hidden_state)[0]
        answer_at = torch.nonzero(owners[0] == q).flatten() - 1  # positions that predict the answer tokens
        n = len(answer_at)
        torch.testing.assert_close(packed[0, answer_at], logits[-n - 1:-1], atol=1e-5, rtol=1e-4)
        assert ok[0, answer_at].tolist() == (logits[-n - 1:-1].argmax(-1) == alone[0, -n:]).tolist()
    single = len(rows[1][0])
    assert torch.equal(positions[1, :single], torch.arange(single)), "one question: plain positions"


def test_mention_targets_mark_each_named_object_at_its_shape_word():
    """Hand-built scene: a unique red circle and blue square, two green triangles (name not unique)."""
    tokenizer = build_tokenizer()
    objs = [scenes.Obj("circle", "red", "small", 30, 40), scenes.Obj("square", "blue", "large", 200, 100),
            scenes.Obj("triangle", "green", "medium", 100, 300), scenes.Obj("triangle", "green", "small", 300, 300)]
    graph = scenes.Scene(objects=objs)
    questions = [{"family": "size", "question": "Is the red circle bigger than the blue square?", "answer": "no"},
                 {"family": "exist", "question": "Is there a green triangle?", "answer": "yes"},
                 {"family": "exist", "question": "Is there a red square?", "answer": "no"}]
    row = qa_sequence(tokenizer, questions, 3, np.random.default_rng(0))
    ids = pad_batch([row], tokenizer.pad_token_id)[0]
    targets = mention_targets(tokenizer, ids, [graph])[0]
    words = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    marked = {(words[t - 1], words[t]): targets[t].tolist() for t in torch.nonzero(targets[:, 0] >= 0).flatten()}
    assert marked == {("red", "circle"): [0, 30, 40], ("blue", "square"): [2, 200, 100]}
    assert (targets[targets[:, 0] < 0] == -1).all()


def test_relation_targets_mark_the_second_mention_of_each_question():
    tokenizer = build_tokenizer()
    objs = [scenes.Obj("circle", "red", "small", 30, 40), scenes.Obj("square", "blue", "large", 200, 100),
            scenes.Obj("triangle", "green", "medium", 100, 300), scenes.Obj("triangle", "green", "small", 300, 300)]
    questions = [{"family": "size", "question": "Is the red circle bigger than the blue square?", "answer": "no"},
                 {"family": "spatial", "question": "Is the blue square left of the red circle?", "answer": "no"},
                 {"family": "exist", "question": "Is there a red circle?", "answer": "yes"},
                 {"family": "exist", "question": "Is there a blue square?", "answer": "yes"},
                 {"family": "spatial", "question": "Is the green triangle above the red circle?", "answer": "no"}]
    row = qa_sequence(tokenizer, questions, 3, np.random.default_rng(1))
    ids = pad_batch([row], tokenizer.pad_token_id)[0]
    mentions = mention_targets(tokenizer, ids, [scenes.Scene(objects=objs)])
    targets = relation_targets(tokenizer, ids, mentions)[0]
    words = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    marked = sorted((" ".join(words[t - 3:t + 1]), targets[t].tolist())
                    for t in torch.nonzero(~targets[:, 0].isnan()).flatten())
    # x, y and size step of the first named object minus the second's; single mentions (existence) and
    # questions naming a non-unique object (two green triangles) mark nothing, even when the exist turns sit
    # next to each other
    assert marked == [("of the red circle", [170.0, 60.0, 2.0]), ("than the blue square", [-170.0, -60.0, -2.0])]
    assert targets[:, 1].isnan().sum() == len(words) - 2


def test_letter_targets_mark_the_letter_each_text_answer_position_predicts():
    tokenizer = build_tokenizer()
    questions = [{"family": "text", "question": "What does the sign say?", "answer": "xrm"},
                 {"family": "colour", "question": "What colour is the circle?", "answer": "red"}]
    row = qa_sequence(tokenizer, questions, 3, np.random.default_rng(0))
    _, labels, _, _, _ = pad_batch([row], tokenizer.pad_token_id)
    targets = letter_targets(tokenizer, labels)[0]
    at = torch.nonzero(targets >= 0).flatten()
    assert "".join(scenes.LETTERS[i] for i in targets[at]) == "xrm"
    # position t holds the letter that token t + 1 spells: "x", "##r", "##m"
    assert tokenizer.convert_ids_to_tokens(labels[0, at + 1].tolist()) == ["x", "##r", "##m"]
    assert (targets[targets < 0] == -1).all() and len(at) == 3, "the colour answer and </s> are not letters"


def test_layer_probe_reads_the_chosen_layer_and_trains_it():
    torch.manual_seed(0)
    probe = LayerProbe(8, layer=1)
    hidden = tuple(torch.randn(2, 5, 8, requires_grad=True) for _ in range(3))
    mentions, letters = torch.full((2, 5, 3), -1), torch.full((2, 5), -1)
    zero, stats = probe.loss(hidden, mentions, letters)
    assert zero.item() == 0.0 and stats == {}
    mentions[1, 3] = torch.tensor([2, 168, 84])
    letters[0, 2] = 5
    loss, stats = probe.loss(hidden, mentions, letters)
    loss.backward()
    assert hidden[2].grad is None and hidden[0].grad is None
    touched = torch.nonzero(hidden[1].grad.abs().sum(-1)).tolist()
    assert touched == [[0, 2], [1, 3]], "only the mention and the letter position get a gradient"
    guess = probe.position(hidden[1][1, 3]).detach()
    assert stats["mention_position_px"] == pytest.approx(float((guess - torch.tensor([0.5, 0.25])).abs().mean()) * 336,
                                                         rel=1e-5)
    assert stats["reading"] == float(probe.letter(hidden[1][0, 2]).argmax() == 5)
    _, only_letters = probe.loss(hidden, None, letters)
    assert set(only_letters) == {"reading"}, "phases without mention targets still train reading"
    relations = torch.full((2, 5, 3), float("nan"))
    relations[0, 4] = torch.tensor([-84.0, 168.0, 1.0])
    for h in hidden:
        h.grad = None
    _, stats = probe.loss(hidden, None, letters, relations)
    guess = probe.relation(hidden[2][0, 4]).detach()
    assert stats["relation_px"] == pytest.approx(float((guess[:2] - torch.tensor([-0.25, 0.5])).abs().mean()) * 336,
                                                 rel=1e-5)
    assert stats["relation_sign"] == float(((guess[:2] > 0) == torch.tensor([False, True])).float().mean())
    assert stats["relation_size"] == float(guess[2] > 0)
    probe.loss(hidden, None, letters, relations)[0].backward()
    assert torch.nonzero(hidden[2].grad.abs().sum(-1)).tolist() == [[0, 4]], "relations read one layer higher"


@pytest.mark.parametrize("args, message", [(["--llm-scale", "0"], "--llm-scale must be > 0"),
                                           (["--llm-lr=-1e-3"], "--llm-lr must be > 0"),
                                           (["--optimizer", "sgdx"], "unknown optimizer 'sgdx'"),
                                           (["--step", "adam"], "unknown step 'adam'"),
                                           (["--sparsity", "1"], "--sparsity must be in [0, 1)"),
                                           (["--device", "nope"], "--device 'nope' is not usable")])
def test_bad_arguments_exit_with_one_line(tmp_path, args, message):
    proc = subprocess.run([*CLI, "--smoke", "--out", str(tmp_path), *args], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tokencomp train: error: ") and message in line


def _model_and_probe(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.ModuleDict]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    probe = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 2), "b": torch.nn.Linear(8, 1)})
    return model, probe


def _loss(model, probe, x, y, use_b: bool) -> torch.Tensor:
    """Answer loss + probe loss; probe head "b" joins only when use_b (as a probe head whose targets a batch
    lacks gets no gradient at all)."""
    hidden = model[1](model[0](x))
    loss = torch.nn.functional.cross_entropy(model[2](hidden), y) + probe["a"](hidden).square().mean()
    return loss + probe["b"](hidden).abs().mean() if use_b else loss


def test_base_step_is_the_plain_loop_bit_for_bit():
    """The recipe's update with --step base equals the loop the shipped model was trained with (two AdamW
    optimizers, zero_grad, backward, joint clip to norm 1, step each), on every weight and every
    optimizer-state entry after each step, including steps where a probe head gets no gradient (AdamW must
    skip it)."""
    config = tiny_llava.Config()
    model, probe = _model_and_probe()
    ref_model, ref_probe = _model_and_probe()
    stepper = tiny_llava.make_stepper(config, [list(model.parameters()), list(probe.parameters())], 0.05,
                                      max_grad_norm=1.0)
    ref_opts = [torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.01, betas=(0.9, 0.98))
                for m in (ref_model, ref_probe)]
    g = torch.Generator().manual_seed(1)
    clipped = skipped = 0
    for step in range(8):
        x, y = 4 * torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        use_b = step % 3 != 1
        lr = 0.05 * (step + 1) / 8
        for group in stepper.optimizer.param_groups:
            group["lr"] = lr
        stepper.step(lambda x=x, y=y, use_b=use_b: _loss(model, probe, x, y, use_b))
        b_before = ref_probe["b"].weight.detach().clone()
        for opt in ref_opts:
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
        _loss(ref_model, ref_probe, x, y, use_b).backward()
        norm = torch.nn.utils.clip_grad_norm_([*ref_model.parameters(), *ref_probe.parameters()], 1.0)
        for opt in ref_opts:
            opt.step()
        clipped += bool(norm > 1.0)
        skipped += bool(torch.equal(b_before, ref_probe["b"].weight)) and step > 0
        for ours, ref in ((model, ref_model), (probe, ref_probe)):
            for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
                assert torch.equal(p, q), f"step {step}: {name} differs"
        states = [s for opt in stepper.optimizer.optimizers for s in opt.state.values()]
        ref_states = [s for opt in ref_opts for s in opt.state.values()]
        assert len(states) == len(ref_states)
        for ours, ref in zip(states, ref_states, strict=True):
            assert all(torch.equal(ours[k], ref[k]) for k in ref), f"step {step}: optimizer state differs"
    assert clipped > 0, "the joint clip must have acted, or the test does not check it"
    assert skipped > 0, "a head without a gradient must have been skipped at least once"
    assert (stepper.forwards, stepper.backwards) == (8, 8)


@pytest.mark.parametrize("name, passes", [("sam", (2, 2)), ("s2sam", (1, 1)), ("zosam", (3, 1))])
def test_each_step_strategy_drives_the_recipe_update(name, passes):
    """--step picks the strategy (pass counts per step: SAM 2 + 2, S2-SAM 1 + 1, ZO-SAM 2q + 1 forwards with
    q = 1); its steps move the weights away from the base step's."""
    config = tiny_llava.Config(step=name)
    results = []
    for cfg in (config, tiny_llava.Config()):
        model, probe = _model_and_probe()
        stepper = tiny_llava.make_stepper(cfg, [list(model.parameters()), list(probe.parameters())], 0.05,
                                          max_grad_norm=1.0)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            stepper.step(lambda x=x, y=y, m=model, p=probe: _loss(m, p, x, y, True))
        results.append((stepper, model[0].weight.detach()))
    (stepper, weight), (_, base_weight) = results
    assert (stepper.forwards, stepper.backwards) == (3 * passes[0], 3 * passes[1])
    assert not torch.equal(weight, base_weight)


def test_sparse_s2sam_smoke_run_keeps_exact_zeros(tmp_path):
    """--step s2sam --sparsity 0.5: every masked linear weight of the saved model holds exactly its budget of
    nonzeros (the rest bitwise zero), the LM head stays dense, and each phase logs S2-SAM's one forward and
    one backward a step."""
    args = ["--tower-steps", "1", "--llm-scale", "0.001", "--step", "s2sam", "--sparsity", "0.5"]
    proc = subprocess.run([*CLI, "--smoke", "--out", str(tmp_path), *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    inside = ("model.multi_modal_projector.", "model.language_model.layers.")
    masked = [(name, module.weight) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith(inside)]
    assert len(masked) == 2 + 7 * model.config.text_config.num_hidden_layers
    for name, weight in masked:
        assert int((weight != 0).sum()) == round(0.5 * weight.numel()), name
    assert bool((model.lm_head.weight != 0).all())
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    phases = [r for r in records if r["stage"] == "llm"]
    assert len(phases) == len(tiny_llava.CURRICULUM)
    assert all(r["forwards"] == r["backwards"] == r["steps"] for r in phases)


def _run_folder(path, weight: torch.Tensor, step: torch.Tensor):
    (path / "model").mkdir(parents=True)
    save_file({"w": weight}, path / "model" / "model.safetensors")
    torch.save({"weight": weight}, path / "tower.pt")
    torch.save({"model": {"w": weight}, "optimizer": {"state": {0: {"step": step, "exp_avg": weight * 2}}},
                "phase": 3}, path / "llm.pt")
    torch.save(weight.half(), path / "features_train_2.pt")
    return path


def test_state_diff_reports_the_largest_difference_of_any_tensor(tmp_path, capsys):
    weight = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    base = _run_folder(tmp_path / "a", weight, torch.tensor(4))
    same = _run_folder(tmp_path / "b", weight.clone(), torch.tensor(4))
    assert state_diff.main([str(base), str(same)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "all: 6 tensors, max abs diff 0.0"
    moved = weight.clone()
    moved[1, 1] += 0.25
    result = state_diff.compare(base, _run_folder(tmp_path / "c", moved, torch.tensor(4)))
    assert result["model/model.safetensors"] == (1, 0.25) and result["llm.pt"] == (3, 0.5), "exp_avg is 2 w"
    stepped = _run_folder(tmp_path / "e", weight, torch.tensor(5))
    assert state_diff.compare(base, stepped)["llm.pt"] == (3, 1.0), "an integer tensor counts unequal entries"
    signed = weight.clone()
    signed[1, 0] = -0.0
    signed_run = _run_folder(tmp_path / "d", signed, torch.tensor(4))
    assert state_diff.main([str(base), str(signed_run)]) == 1, "-0.0 is not +0.0"
    assert state_diff.main([str(base), str(tmp_path / "missing")]) == 2
