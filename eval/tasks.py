"""The task registry: a name, a loader of samples from a local folder, a per-sample scorer and an aggregate.
Nothing downloads; see `benchmarks.py` for the file layouts each standard benchmark is read from.

`synthetic` is the shipped model's procedural VQA (`training/scenes.py`), read from the layout `write_split`
produces: `questions.json` (a list of {question_id, image, question, answers, family, pope}) next to the images.
With no --data-dir it is generated into a cache folder, deterministically. It has two held-out splits: `val`, to
tune methods on, and `test` (the default), to report each final configuration once.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tokencomp.eval import benchmarks, metrics
from tokencomp.eval.sample import Sample, Task


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


def load_synthetic(data_dir: Path | None, limit: int | None, split: str = "test") -> list[Sample]:
    """The first `limit` questions of `split` (scene by scene, the order the model card scores)."""
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SYNTHETIC_SPLITS)} for synthetic; got {split!r}")
    if data_dir is None:
        from tokencomp.training import scenes

        n_scenes = max(100, (limit or 1000) // 4)  # scenes carry 4-7 questions each
        # Keyed by the generator's source: a cached split from an older generator would score a model on
        # scenes and questions it was never meant for.
        version = hashlib.sha256(Path(scenes.__file__).read_bytes()).hexdigest()[:12]
        data_dir = Path.home() / ".cache" / "tokencomp" / f"synthetic-{split}-{n_scenes}-{version}"
        if not (data_dir / "questions.json").is_file():
            scenes.write_split(split, n_scenes, data_dir)
    samples = load_questions_json(data_dir, limit)
    other = next((s.id for s in samples if not s.id.startswith(f"{split}-")), None)
    if other is not None:
        raise ValueError(f"{data_dir} holds question {other!r}, not of the {split!r} split asked for "
                         f"(synthetic ids start with '{split}-')")
    return samples


SYNTHETIC_SPLITS = ("val", "test")


def load(task: Task, data_dir: Path | None, limit: int | None, split: str | None) -> list[Sample]:
    """The task's samples; `split` only for a task that has splits (None: its default)."""
    if split is None:
        return task.load(data_dir, limit)
    if not task.splits:
        raise ValueError(f"--split applies to tasks with held-out splits ({', '.join(with_splits())}); "
                         f"{task.name!r} has none")
    return task.load(data_dir, limit, split=split)


def label(task: Task, split: str | None) -> str:
    """The task as results name it: `synthetic` (its default split), `synthetic_val`."""
    return task.name if split is None or split == task.splits[-1] else f"{task.name}_{split}"


def with_splits() -> list[str]:
    return [name for name, t in TASKS.items() if t.splits]


def _letter(prediction: str, sample: Sample) -> float:
    return float(metrics.extract_letter(prediction, sample.meta["letters"]) == sample.answers[0])


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("synthetic", load_synthetic, exact_match, metrics.mean_aggregate, splits=SYNTHETIC_SPLITS),
    Task("vqav2", benchmarks.load_vqav2, lambda p, s: metrics.vqa_accuracy(p, s.answers), metrics.mean_aggregate,
         max_tokens=16),
    Task("gqa", benchmarks.load_gqa, lambda p, s: metrics.gqa_match(p, s.answers[0]), metrics.mean_aggregate,
         max_tokens=16),
    Task("textvqa", benchmarks.load_textvqa, lambda p, s: metrics.vqa_accuracy(p, s.answers, evalai=True),
         metrics.mean_aggregate, max_tokens=16),
    Task("pope", benchmarks.load_pope, lambda p, s: float(metrics.parse_yes_no(p) == s.answers[0]),
         metrics.pope_aggregate, max_tokens=16),
    Task("mme", benchmarks.load_mme, lambda p, s: metrics.mme_score(p, s.answers), metrics.mme_aggregate,
         max_tokens=16, unit="points"),
    Task("scienceqa", benchmarks.load_scienceqa, _letter, metrics.mean_aggregate, max_tokens=16),
]}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]
