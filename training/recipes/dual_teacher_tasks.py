"""The dual-teacher recipe's continual tasks and their data: two question families the shipped model never
answered, asked about objects named "<colour> <shape>", with a fixed set of colour-shape combinations held out of
every training prompt (to measure accuracy on combinations never trained).

1. `size_name`: "What size is the red circle?" -> small / medium / large (the moe-llava recipe's new family);
2. `side`: "Which side is the red circle on?" -> left / right (which half of the image holds its centre; objects
   within 24 px of the middle are not asked about).

Both use words the tokenizer already has or spells as word pieces ("which", "side", "on", "right"), so the
vocabulary and embeddings stay as shipped. Training sequences hold a scene's labelled task turns and, after them,
unlabelled reference turns: prompts of the families learnt before (old families, earlier tasks) whose answers
are never trained on; the distillation graphs are built over every turn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from tokencomp.training import scenes
from tokencomp.training.llava_loss import IGNORE
from tokencomp.training.recipes.tiny_llava_sequences import pad_batch, qa_sequence

TASKS = ("size_name", "side")
# One combination per colour, each shape twice: every colour and every shape is still trained, only these
# pairings never are.
HELD_OUT = frozenset({("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle"),
                      ("purple", "square"), ("orange", "triangle")})
_MIDDLE_MARGIN = 24  # px: objects this close to the vertical midline have no clear side


def task_questions(task: str, scene: scenes.Scene) -> list[dict]:
    """Every question of `task` about scene's uniquely named objects, each with `held_out` (its object's
    colour-shape combination is in HELD_OUT)."""
    rows = []
    for o in scenes.unique(scene.objects, lambda o: o.name):
        if task == "size_name":
            question, answer = f"What size is the {o.name}?", o.size
        elif task == "side":
            if abs(o.x - scenes.SIZE / 2) <= _MIDDLE_MARGIN:
                continue
            question, answer = f"Which side is the {o.name} on?", "left" if o.x < scenes.SIZE / 2 else "right"
        else:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        rows.append({"family": task, "question": question, "answer": answer,
                     "held_out": (o.colour, o.shape) in HELD_OUT})
    return rows


def training_turns(task: str, scene: scenes.Scene, rng: random.Random, turns: int) -> list[dict]:
    """Up to `turns` labelled questions of `task` about the scene, none about a held-out combination."""
    rows = [q for q in task_questions(task, scene) if not q["held_out"]]
    rng.shuffle(rows)
    return rows[:turns]


def reference_turns(earlier: tuple[str, ...], scene: scenes.Scene, rng: random.Random, turns: int) -> list[dict]:
    """Up to `turns` unlabelled prompts about the scene from the families learnt before the current task: the
    old families and the `earlier` new tasks (their seen combinations), drawn round-robin. Answers are blanked:
    only the prompt's representation is used."""
    pools = [scenes.training_questions(scene, rng, turns)]
    pools += [[q for q in task_questions(t, scene) if not q["held_out"]] for t in earlier]
    for pool in pools:
        rng.shuffle(pool)
    rows: list[dict] = []
    while len(rows) < turns and any(pools):
        for pool in pools:
            if pool and len(rows) < turns:
                rows.append({**pool.pop(), "answer": ""})
    return rows


def kept_patches(scene: scenes.Scene, keep_background: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of every patch holding an object or a sign letter and of each other patch with probability
    `keep_background` (whole images cost several times the compute)."""
    labels = scenes.patch_labels(scene)
    content = (labels["colour"] > 0) | (labels["letter"] > 0)
    return np.flatnonzero(content | (rng.random(content.shape) < keep_background))


def make_batch(tokenizer, feats: torch.Tensor, indices: list[int], labelled: list[list[dict]],
               unlabelled: list[list[dict]], rng: np.random.Generator, kept: list[np.ndarray] | None = None
               ) -> dict:
    """One packed sequence per scene (feats [S, 576, Dv] cached tower features; scene indices[i] with turns
    labelled[i] + unlabelled[i], over its patches kept[i] or all). Returns the `lm_loss` inputs (ids, labels,
    mask, positions, image [M, Dv]) with the unlabelled turns' labels blanked, and per turn n (N in all):
    `ask` [N, 2] (row, position whose next-token prediction starts the answer), `scene_row` [N], `family`,
    `held_out`, `trained` [N] (bool: labelled turn), `owners` [B, L] and `questions` (per row, all its turns)."""
    kept = kept or [np.arange(feats.shape[1])] * len(indices)
    questions = [a + b for a, b in zip(labelled, unlabelled)]
    rows = [qa_sequence(tokenizer, qs, len(k), rng) for qs, k in zip(questions, kept)]
    ids, labels, mask, positions, owners = pad_batch(rows, tokenizer.pad_token_id)
    ask, scene_row, trained = [], [], []
    for r, qs in enumerate(questions):
        for q in range(len(qs)):
            first = int(torch.nonzero(owners[r] == q)[0])
            ask.append((r, first - 1))
            scene_row.append(r)
            trained.append(q < len(labelled[r]))
            if q >= len(labelled[r]):
                labels[r][owners[r] == q] = IGNORE
    image = torch.cat([feats[i][torch.from_numpy(k)] for i, k in zip(indices, kept)]).float()
    return {"ids": ids, "labels": labels, "mask": mask, "positions": positions, "image": image,
            "ask": torch.tensor(ask), "scene_row": torch.tensor(scene_row), "trained": torch.tensor(trained),
            "family": [q["family"] for qs in questions for q in qs],
            "held_out": [bool(q.get("held_out", False)) for qs in questions for q in qs],
            "owners": owners, "questions": questions}


def eval_questions(split: str, index: int) -> list[dict]:
    """Every old-family question of the scene (`scenes.make_questions`) and every question of each new task."""
    scene = scenes.make_scene(split, index)
    return scene.questions + [q for t in TASKS for q in task_questions(t, scene)]


def write_task_split(split: str, count: int, out: Path) -> Path:
    """Render `count` scenes of `split` into `out/images/` and write `out/questions.json` in the eval layout
    (question_id '<split>-<scene>-<j>', image, question, answers, family) with the new tasks' questions; family
    names end in '_held_out' for held-out combinations, so per-family tables separate them."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        scene = scenes.make_scene(split, index)
        name = f"images/{split}_{index:06d}.png"
        if not (out / name).exists():
            scenes.render(scene).save(out / name)
        for j, q in enumerate(q for t in TASKS for q in task_questions(t, scene)):
            rows.append({"question_id": f"{split}-{index}-{j}", "image": name, "question": q["question"],
                         "answers": [q["answer"]], "family": q["family"] + ("_held_out" if q["held_out"] else ""),
                         "scene": index})
    path = out / "questions.json"
    path.write_text(json.dumps(rows, indent=1))
    return path
