"""Loaders for local copies of the standard benchmarks, in the files their authors distribute (nothing is
downloaded). Each returns Samples whose `question` is the full prompt text the model sees, with the short-answer
instructions the LLaVA-1.5 evaluation scripts use, and checks that the images of the returned samples exist.

    vqav2      v2_OpenEnded_mscoco_<split>_questions.json + v2_mscoco_<split>_annotations.json, COCO images
    gqa        testdev_balanced_questions.json, images/<imageId>.jpg
    textvqa    TextVQA_0.5.1_val.json, train_images/<image_id>.jpg (the val images live there)
    pope       coco_pope_{random,popular,adversarial}.json (JSON lines), COCO val2014 images
    mme        MME_Benchmark_release_version/<subtask>/..., or the parquet release (images inside)
    scienceqa  problems.json + pid_splits.json, images/test/<pid>/image.png (the IMG subset of test)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokencomp.eval.sample import Sample

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
_IMAGE_DIRS = ("", "images", "val2014", "train_images", "test_images", "train_val_images")


def _need(data_dir: Path | None, task: str) -> Path:
    if data_dir is None:
        raise ValueError(f"task {task!r} reads a local copy of its data: pass --data-dir")
    return data_dir


def _one(data_dir: Path, patterns: Iterable[str], what: str) -> Path:
    for pattern in patterns:
        found = sorted(data_dir.rglob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"no {what} ({' or '.join(patterns)}) under {data_dir}")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def _jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON lines: {exc}") from None


def _image(data_dir: Path, name: str, extra_dirs: Iterable[str] = ()) -> Path:
    """The first existing <data_dir>/<dir>/<name>; the plain path if none exists (checked after `limit`)."""
    for sub in (*extra_dirs, *_IMAGE_DIRS):
        path = data_dir / sub / name
        if path.is_file():
            return path
    return data_dir / name


def _finish(samples: list[Sample], limit: int | None, path: Path) -> list[Sample]:
    samples = samples[:limit] if limit else samples
    if not samples:
        raise ValueError(f"{path} holds no samples")
    missing = [s.image for s in samples if not s.image.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) missing, e.g. {missing[0]}")
    return samples


def _fields(path: Path, row: dict, *keys: str) -> list:
    try:
        return [row[k] for k in keys]
    except (KeyError, TypeError):
        raise ValueError(f"{path} is malformed: a row lacks one of {', '.join(keys)}") from None


def load_vqav2(data_dir: Path | None, limit: int | None) -> list[Sample]:
    root = _need(data_dir, "vqav2")
    qpath = _one(root, ["v2_OpenEnded_mscoco_*_questions.json", "*questions*.json"], "VQAv2 questions file")
    apath = _one(root, ["v2_mscoco_*_annotations.json", "*annotations*.json"], "VQAv2 annotations file")
    questions, annotations = _json(qpath), _json(apath)
    subtype = questions.get("data_subtype", "val2014") if isinstance(questions, dict) else "val2014"
    by_id = {}
    for a in _fields(apath, annotations, "annotations")[0]:
        qid, answers, kind = _fields(apath, a, "question_id", "answers", "answer_type")
        by_id[qid] = ([x["answer"] for x in answers], kind)
    samples = []
    for q in _fields(qpath, questions, "questions")[0]:
        qid, image_id, text = _fields(qpath, q, "question_id", "image_id", "question")
        if qid not in by_id:
            raise ValueError(f"{apath} has no annotation for question {qid}")
        answers, kind = by_id[qid]
        image = _image(root, f"COCO_{subtype}_{image_id:012d}.jpg", [subtype])
        samples.append(Sample(str(qid), image, text + SHORT, tuple(answers), kind))
    return _finish(samples, limit, qpath)


def load_gqa(data_dir: Path | None, limit: int | None) -> list[Sample]:
    root = _need(data_dir, "gqa")
    path = _one(root, ["testdev_balanced_questions.json", "*_questions.json"], "GQA questions file")
    rows = _json(path)
    if not isinstance(rows, dict):
        raise ValueError(f"{path} is malformed: expected an object question id -> question")  # noqa: TRY004 - a bad file, not a bad call
    samples = []
    for qid, row in rows.items():
        image_id, text, answer = _fields(path, row, "imageId", "question", "answer")
        group = (row.get("types") or {}).get("structural", "all")
        samples.append(Sample(str(qid), _image(root, f"{image_id}.jpg"), text + SHORT, (answer,), group))
    return _finish(samples, limit, path)


def load_textvqa(data_dir: Path | None, limit: int | None) -> list[Sample]:
    root = _need(data_dir, "textvqa")
    path = _one(root, ["TextVQA_*_val.json", "TextVQA_*.json"], "TextVQA file")
    samples = []
    for row in _fields(path, _json(path), "data")[0]:
        qid, image_id, text, answers = _fields(path, row, "question_id", "image_id", "question", "answers")
        samples.append(Sample(str(qid), _image(root, f"{image_id}.jpg"), text + SHORT, tuple(answers), "all"))
    return _finish(samples, limit, path)


POPE_SPLITS = ("random", "popular", "adversarial")


def load_pope(data_dir: Path | None, limit: int | None) -> list[Sample]:
    """All three splits (group = split); `limit` takes the same number from each so the mean F1 stays balanced."""
    root = _need(data_dir, "pope")
    per_split = {}
    for split in POPE_SPLITS:
        path = _one(root, [f"*pope_{split}.json", f"*pope_{split}.jsonl"], f"POPE {split} file")
        rows = []
        for row in _jsonl(path):
            qid, image, text, label = _fields(path, row, "question_id", "image", "text", "label")
            if label not in ("yes", "no"):
                raise ValueError(f"{path} is malformed: label {label!r} is not yes/no")
            rows.append(Sample(f"{split}/{qid}", _image(root, image), text + SHORT, (label,), split))
        per_split[split] = rows
    each = -(-limit // len(POPE_SPLITS)) if limit else None
    samples = [s for rows in per_split.values() for s in (rows[:each] if each else rows)]
    return _finish(samples, limit, root)


def load_mme(data_dir: Path | None, limit: int | None) -> list[Sample]:
    """Both questions of an image stay together (acc+ needs the pair); `limit` counts questions."""
    root = _need(data_dir, "mme")
    parquet = sorted(root.rglob("*.parquet"))
    samples = _mme_parquet(parquet) if parquet else _mme_folders(root)
    if limit:
        samples = samples[:limit + limit % 2]
    return _finish(samples, None, root)


def _mme_folders(root: Path) -> list[Sample]:
    from tokencomp.eval.metrics import MME_COGNITION, MME_PERCEPTION

    samples = []
    for subtask in (*MME_PERCEPTION, *MME_COGNITION):
        folders = sorted(p for p in root.rglob(subtask) if p.is_dir())
        if not folders:
            continue
        folder = folders[0]
        qa_dir, image_dir = (folder / "questions_answers_YN", folder / "images")
        if not qa_dir.is_dir():
            qa_dir = image_dir = folder
        for txt in sorted(qa_dir.glob("*.txt")):
            images = [p for p in image_dir.glob(txt.stem + ".*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
            if not images:
                raise FileNotFoundError(f"no image for {txt} in {image_dir}")
            for n, line in enumerate(txt.read_text().splitlines()):
                if not line.strip():
                    continue
                question, sep, answer = line.rpartition("\t")
                if not sep or answer.strip() not in ("Yes", "No"):
                    raise ValueError(f"{txt} line {n + 1} is malformed: expected 'question<TAB>Yes|No'")
                samples.append(Sample(f"{subtask}/{txt.stem}/{n}", images[0], question.strip(),
                                      (answer.strip(),), subtask, {"image": f"{subtask}/{images[0].name}"}))
    if not samples:
        raise FileNotFoundError(f"no MME subtask folders ({', '.join(MME_PERCEPTION[:3])}, ...) under {root}")
    return samples


def _mme_parquet(files: list[Path]) -> list[Sample]:
    """The parquet release: images are embedded, so they are written once to a cache folder keyed by content."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading MME's parquet release needs pyarrow: pip install pyarrow") from None
    samples = []
    cache = Path.home() / ".cache" / "tokencomp" / "mme-images"
    cache.mkdir(parents=True, exist_ok=True)
    for path in files:
        for n, row in enumerate(pq.read_table(path).to_pylist()):
            qid, image, question, answer, category = _fields(path, row, "question_id", "image", "question",
                                                             "answer", "category")
            data = image["bytes"] if isinstance(image, dict) else image
            file = cache / (hashlib.sha256(data).hexdigest()[:24] + ".png")
            if not file.is_file():
                file.write_bytes(data)
            samples.append(Sample(f"{qid}/{n}", file, question, (answer,), category, {"image": qid}))
    return samples


def load_scienceqa(data_dir: Path | None, limit: int | None) -> list[Sample]:
    """The questions of the test split that have an image, as LLaVA prompts them (context, options, letter)."""
    root = _need(data_dir, "scienceqa")
    ppath = _one(root, ["problems.json"], "ScienceQA problems.json")
    spath = _one(root, ["pid_splits.json"], "ScienceQA pid_splits.json")
    problems, splits = _json(ppath), _json(spath)
    samples = []
    for pid in _fields(spath, splits, "test")[0]:
        row = problems.get(pid) if isinstance(problems, dict) else None
        if row is None:
            raise ValueError(f"{ppath} has no problem {pid} listed in {spath}")
        if not row.get("image"):
            continue
        question, choices, answer = _fields(ppath, row, "question", "choices", "answer")
        letters = "ABCDEFGHIJ"[:len(choices)]
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices))
        context = f"Context: {row['hint']}\n" if row.get("hint") else ""
        prompt = f"{context}{question}\n{options}\n{LETTER}"
        image = _image(root, f"{pid}/{row['image']}", ["images/test", "test"])
        samples.append(Sample(str(pid), image, prompt, (letters[answer],), row.get("subject", "all"),
                              {"letters": letters}))
    return _finish(samples, limit, ppath)
