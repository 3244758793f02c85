"""Tasks as data: a name, a loader of samples from a local folder, and a scorer. Nothing downloads.

`synthetic` is the shipped model's procedural VQA test split (`training/scenes.py`), read from the layout
`write_split` produces: `questions.json` (a list of {question_id, image, question, answers, family, pope}) next
to the images. With no --data-dir it is generated into a cache folder, deterministically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    question: str
    answers: tuple[str, ...]
    group: str  # sub-score key (question family for synthetic)


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[Path | None, int | None], list[Sample]]
    score: Callable[[str, Sample], float]
    max_tokens: int = 8


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def exact_match(prediction: str, sample: Sample) -> float:
    return float(normalise(prediction) in {normalise(a) for a in sample.answers})


def load_questions_json(data_dir: Path, limit: int | None) -> list[Sample]:
    path = data_dir / "questions.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data-dir must hold questions.json and its images")
    try:
        rows = json.loads(path.read_text())
        samples = [Sample(str(r["question_id"]), data_dir / r["image"], r["question"], tuple(r["answers"]),
                          r.get("family", "all")) for r in rows]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is malformed: {exc!r}; expected a list of objects with question_id, image, "
                         "question, answers") from None
    return samples[:limit] if limit else samples


def load_synthetic(data_dir: Path | None, limit: int | None) -> list[Sample]:
    """The first `limit` test questions (scene by scene, the order the model card scores)."""
    if data_dir is None:
        from tokencomp.training.scenes import write_split

        n_scenes = max(100, (limit or 1000) // 4)  # scenes carry 4-7 questions each
        data_dir = Path.home() / ".cache" / "tokencomp" / f"synthetic-test-{n_scenes}"
        if not (data_dir / "questions.json").is_file():
            write_split("test", n_scenes, data_dir)
    return load_questions_json(data_dir, limit)


TASKS: dict[str, Task] = {
    "synthetic": Task("synthetic", load_synthetic, exact_match),
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]
