"""Evaluate a trained tiny LLaVA on the test split and write its model card.

Per-family accuracy on the first N test questions (the first 200 are the fixed sample the tests re-score), the
same questions with the image blanked or swapped for another scene (the answers must fall to chance if the
model reads the image), chance levels, and the time to load the model and answer one question.

    python -m tokencomp.training.model_card --model models/tokencomp-tiny-llava --questions 1000
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.serving.hf_reference import answer
from tokencomp.serving.spec import Spec
from tokencomp.training import scenes

SAMPLE = 200  # the fixed sample the tests re-score


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def fixed_questions(count: int) -> list[dict]:
    """The first `count` questions of the test split, scene by scene, with the scene index."""
    rows, index = [], 0
    while len(rows) < count:
        rows += [{**q, "scene": index} for q in scenes.make_scene("test", index).questions]
        index += 1
    return rows[:count]


def chance(rows: list[dict]) -> dict[str, float]:
    """Best constant answer per family (the accuracy of always answering the family's most common answer)."""
    by_family = defaultdict(Counter)
    for r in rows:
        by_family[r["family"]][r["answer"]] += 1
    return {f: c.most_common(1)[0][1] / sum(c.values()) for f, c in by_family.items()}


def score(model, processor, rows: list[dict], image_for) -> tuple[dict[str, float], list[str]]:
    """(accuracy per family and 'overall', predictions) with images from image_for(row)."""
    right, total, predictions = Counter(), Counter(), []
    for r in tqdm(rows, desc="score", leave=False):
        pred = answer(model, processor, image_for(r), r["question"], Spec(), max_new_tokens=6).text
        predictions.append(pred)
        ok = normalise(pred) == normalise(r["answer"])
        for key in (r["family"], "overall"):
            right[key] += ok
            total[key] += 1
    return {k: right[k] / total[k] for k in total}, predictions


def load_and_answer(model_dir: Path) -> tuple[float, LlavaForConditionalGeneration, object]:
    """Seconds to load the model and processor and answer the first test question, and the two loaded."""
    start = time.perf_counter()
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    first = fixed_questions(1)[0]
    answer(model, processor, scenes.render(scenes.make_scene("test", 0)), first["question"], Spec(), 6)
    return time.perf_counter() - start, model, processor


def evaluate(model_dir: Path, n_questions: int) -> dict:
    # The first load in a process also pays transformers' lazy imports; the next ones show the model's own cost.
    timings = [load_and_answer(model_dir) for _ in range(3)]
    load_and_answer_s, again_s = timings[0][0], statistics.median(t for t, _, _ in timings[1:])
    _, model, processor = timings[-1]
    rows = fixed_questions(n_questions)
    n_scenes = rows[-1]["scene"] + 1
    blank = Image.new("RGB", (scenes.SIZE, scenes.SIZE), (235, 235, 235))
    full, predictions = score(model, processor, rows, lambda r: scenes.render(scenes.make_scene("test", r["scene"])))
    sample, _ = score(model, processor, rows[:SAMPLE], lambda r: scenes.render(scenes.make_scene("test", r["scene"])))
    blanked, _ = score(model, processor, rows, lambda r: blank)
    swapped, _ = score(model, processor, rows,
                       lambda r: scenes.render(scenes.make_scene("test", (r["scene"] + 1) % n_scenes)))
    return {"questions": len(rows), "scenes": n_scenes, "accuracy": full, "sample_200_accuracy": sample["overall"],
            "blank_image": blanked, "other_scene": swapped, "chance": chance(rows),
            "load_and_answer_s": round(load_and_answer_s, 2), "load_and_answer_again_s": round(again_s, 2),
            "sample_200_predictions": predictions[:SAMPLE]}


def training_minutes(log: list[dict]) -> float:
    """Wall time of the stages (tower, feature caches, LLM epochs), each logged once by the run that did it,
    so a resumed run still adds up to the whole."""
    return sum(r.get("seconds", 0) for r in log if r["stage"] != "done") / 60


# Why a family is likely to stay weak, for the card (the generator's question families, scenes.FAMILIES).
_WEAK_REASONS = {
    "colour": "the LLM must find the one object of the named shape among up to eight and read its colour.",
    "shape": "the LLM must find the one object of the named colour among up to eight and read its shape.",
    "count": "counting needs attention spread evenly over every object centre of the named shape.",
    "exist": "the question names an object by colour *and* shape; single-attribute matches must not count.",
    "spatial": ("two objects, each named by colour and shape, must both be found and their positions compared, "
                "all before one answer token; the layer probe (above) shows how coarse the LLM's estimate of each "
                "named object's centre and of the offset between the two still is."),
    "size": ("two objects, each named by colour and shape, must both be found and their sizes compared; the "
             "layer probe's size accuracy (above) is roughly the chance of reading one of them right."),
    "text": ("the answer must spell every letter in order; the tower recognises {letters} of letter patches (last "
             "tower step) and the layer probe reads {reading} of the letters to spell halfway up the LLM."),
}


def card(result: dict, log: list[dict], command: str) -> str:
    tower = [r for r in log if r["stage"] == "tower"][-1:]
    llm = [r for r in log if r["stage"] == "llm"]
    probe = [r for r in log if r["stage"] == "llm step" and "mention_size" in r][-1:]
    reading = [r for r in log if r["stage"] == "llm step" and "reading" in r][-1:]
    relation = [r for r in log if r["stage"] == "llm step" and "relation_px" in r][-1:]
    families = [f for f in scenes.FAMILIES if f in result["accuracy"]] + ["overall"]
    pct = lambda x: f"{100 * x:.1f}"
    offset = "".join(f"; offset off by {r['relation_px']:.1f} px, its sign right {pct(r['relation_sign'])} %"
                     + (f", bigger or smaller right {pct(r['relation_size'])} %" if "relation_size" in r else "")
                     for r in relation)
    lines = [
        "# tokencomp-tiny-llava",
        "",
        "A LLaVA-architecture VLM trained from scratch by `training/recipes/tiny_llava.py` on procedurally generated",
        "scenes (`training/scenes.py`): CLIP-style ViT (patch 14, 336 px -> 576 patch tokens + CLS, features from",
        "layer -2), 2-layer GELU projector, LLaMA decoder, word-piece tokenizer; llava-hf key layout, so",
        "transformers and vLLM both load it. It is the default model of `tokencomp serve`, `eval` and `demo`.",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        (f"- Seed and sizes: see `training_config.json` (seed {result['config']['seed']}, "
         f"{result['config']['train_scenes']} training scenes, {result['config']['val_scenes']} validation scenes, "
         f"{result['config']['tower_steps']} tower steps x {result['config']['tower_batch']} images, "
         f"LLM steps x {result['config']['llm_scale']} of the curriculum's, batch {result['config']['llm_batch']})."),
        f"- Wall time on 2 CPU cores: {training_minutes(log):.0f} min (tower pre-training, feature cache, LLM).",
        ("- Tower pre-training (dense labels from the generator: per-patch colour / shape / size / letter / letter "
         "slot / object centre, per-object attributes and position, scene content on CLS), last logged step: "
         f"{json.dumps(tower[0]) if tower else 'n/a'}"),
        "- LLM curriculum (phase: steps, validation answer accuracy on whole images, teacher-forced, each question alone): "
        + "; ".join(f"{r['phase']}: {r['steps']}, {pct(r['val']['overall'])} %" for r in llm),
        ("- Layer probe (training only: a middle layer of the LLM predicts, at each \"colour shape\" mention, that "
         "object's size and centre, and at each token of a sign's text answer the letter it spells next; one layer "
         "up, at a question's second mention, the offset in place and size of the first named object from the "
         "second), last logged step: "
         + (f"size {pct(probe[0]['mention_size'])} %, centre off by {probe[0]['mention_position_px']:.1f} px"
            if probe else "n/a")
         + (f"; letters {pct(reading[0]['reading'])} %" if reading else "")
         + offset),
        "",
        f"## Test accuracy ({result['questions']} questions from {result['scenes']} test scenes, greedy, 576 tokens)",
        "",
        "| family | full image | blank image | other scene | chance (best constant) |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in families:
        ch = pct(result["chance"][f]) if f in result["chance"] else "—"
        lines.append(f"| {f} | {pct(result['accuracy'][f])} | {pct(result['blank_image'][f])} | "
                     f"{pct(result['other_scene'][f])} | {ch} |")
    weak = [f for f in scenes.FAMILIES if f in result["chance"] and result["accuracy"][f] <= result["chance"][f] + 0.05]
    if weak:
        letters = f"{100 * tower[0]['letter']:.0f} %" if tower and "letter" in tower[0] else "n/a"
        spelled = f"{100 * reading[0]['reading']:.0f} %" if reading else "n/a"
        lines += ["", f"At or near their best-constant answer: **{', '.join(weak)}**. Likeliest reasons:"]
        lines += [f"- {f}: {_WEAK_REASONS[f].format(letters=letters, reading=spelled)}" for f in weak]
    lines += [
        "",
        (f"Fixed 200-question sample (the first 200 test questions; `tests/test_shipped_model.py` re-scores it): "
        f"**{pct(result['sample_200_accuracy'])} %**."),
        (f"Load + answer one question in transformers: {result['load_and_answer_s']} s, the first time in a process "
         f"(with transformers' lazy imports); {result['load_and_answer_again_s']} s again."),
        "",
        ("Reproduce: `python -m tokencomp.training.model_card --model models/tokencomp-tiny-llava "
        f"--questions {result['questions']}` (writes this card and `eval.json`)."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--run", type=Path, default=None, help="training run dir (log.jsonl, config.json)")
    parser.add_argument("--command", default="tokencomp train tiny-llava", help="the training command, for the card")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"model_card: error: {args.model} is not a model directory", file=sys.stderr)
        return 2
    if args.run:
        (args.model / "training_log.jsonl").write_text((args.run / "log.jsonl").read_text())
        (args.model / "training_config.json").write_text((args.run / "config.json").read_text())
    result = evaluate(args.model, args.questions)
    result["config"] = json.loads((args.model / "training_config.json").read_text())
    log = [json.loads(line) for line in (args.model / "training_log.jsonl").read_text().splitlines()]
    (args.model / "eval.json").write_text(json.dumps(result, indent=1))
    (args.model / "README.md").write_text(card(result, log, args.command))
    print((args.model / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
