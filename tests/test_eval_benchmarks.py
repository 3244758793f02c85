"""Loaders read hand-made files in each benchmark's distributed format; the task's scorer and aggregate then
give the score worked out by hand for a set of predictions. Bad folders fail with one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tokencomp.eval import tasks
from tokencomp.eval.benchmarks import SHORT
from tokencomp.eval.runner import answered, summarise


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _score(name: str, root: Path, predictions: list[str]) -> tuple[list, dict]:
    task = tasks.get(name)
    samples = task.load(root, None)
    assert len(samples) == len(predictions)
    records = [answered(task, s, p, 10, 0.1) for s, p in zip(samples, predictions)]
    return samples, summarise(task, records)


def test_vqav2(tmp_path):
    _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
        {"image_id": 42, "question": "How many dogs?", "question_id": 421}]})
    _write(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "answer_type": "other", "multiple_choice_answer": "red",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(["red"] * 2 + ["maroon"] * 8)]},
        {"question_id": 421, "image_id": 42, "answer_type": "number", "multiple_choice_answer": "2",
         "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]}]})
    _png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    samples, summary = _score("vqav2", tmp_path, ["Red", "two"])
    assert samples[0].question == "What color is the bus?" + SHORT
    assert samples[0].image.name == "COCO_val2014_000000000042.jpg"
    # red: 2 of 10 -> 0.6 ; two -> 2: 10 of 10 -> 1.0
    assert summary["score"] == pytest.approx(0.8)
    assert summary["groups"] == pytest.approx({"number": 1.0, "other": 0.6})


def test_gqa(tmp_path):
    _write(tmp_path / "testdev_balanced_questions.json", {
        "q1": {"imageId": "n1", "question": "Is the cup on the left?", "answer": "yes",
               "types": {"structural": "verify"}},
        "q2": {"imageId": "n1", "question": "What is on the table?", "answer": "cup",
               "types": {"structural": "query"}}})
    _png(tmp_path / "images" / "n1.jpg")
    samples, summary = _score("gqa", tmp_path, ["Yes.", "the cup"])
    assert [s.group for s in samples] == ["verify", "query"]
    assert summary["score"] == pytest.approx(0.5)


def test_textvqa(tmp_path):
    _write(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": [
        {"question": "what brand is this?", "question_id": 7, "image_id": "abc", "set_name": "val",
         "answers": ["coca-cola's"] * 3 + ["coke"] * 7}]})
    _png(tmp_path / "train_images" / "abc.jpg")
    _, summary = _score("textvqa", tmp_path, ["Coca-Cola's"])
    assert summary["score"] == pytest.approx(0.9)


def test_pope_three_splits(tmp_path):
    rows = {"random": [("yes", "Yes"), ("no", "No")], "popular": [("yes", "No"), ("no", "No")],
            "adversarial": [("yes", "Yes"), ("no", "Yes")]}
    for split, pairs in rows.items():
        lines = [json.dumps({"question_id": i, "image": "COCO_val2014_000000000001.jpg",
                             "text": "Is there a dog in the image?", "label": gold})
                 for i, (gold, _) in enumerate(pairs)]
        _write(tmp_path / f"coco_pope_{split}.json", "\n".join(lines))
    _png(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    predictions = [pred for pairs in rows.values() for _, pred in pairs]
    samples, summary = _score("pope", tmp_path, predictions)
    assert len({s.id for s in samples}) == 6  # ids repeat across splits in the files
    # random F1 1; popular: tp 0 -> F1 0; adversarial: tp 1, fp 1 -> P 1/2, R 1 -> F1 2/3
    assert summary["splits"]["popular"]["f1"] == 0.0
    assert summary["score"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert summary["pooled"]["yes_ratio"] == pytest.approx(3 / 6)


def test_mme_folders_both_layouts(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    _png(root / "color" / "000000006723.jpg")  # images and txt side by side
    _write(root / "color" / "000000006723.txt", "Is there a red bus in the image? Please answer yes or no.\tYes\n"
           "Is there a blue bus in the image? Please answer yes or no.\tNo\n")
    _png(root / "artwork" / "images" / "10002.jpg")  # images/ + questions_answers_YN/
    _write(root / "artwork" / "questions_answers_YN" / "10002.txt",
           "Is this artwork by Monet? Please answer yes or no.\tYes\nIs this artwork by Dali? Please answer yes or no.\tNo")
    _png(root / "code_reasoning" / "0020.png")
    _write(root / "code_reasoning" / "0020.txt", "Does it print 3? Please answer yes or no.\tYes\n"
           "Does it print 4? Please answer yes or no.\tNo\n")
    # loader order: perception subtasks in MME's order (color before artwork), then cognition
    samples, summary = _score("mme", tmp_path, ["Yes", "Yes", "Yes", "No", "no", "No"])
    assert samples[0].question.endswith("Please answer yes or no.")  # MME prompts are used as they are
    # artwork 200, color 150 + 0 (acc 1/2, acc+ 0) = 50 -> perception 250; code_reasoning 50 -> cognition 50
    assert summary["subtasks"]["artwork"]["score"] == pytest.approx(200)
    assert summary["subtasks"]["color"]["score"] == pytest.approx(50)
    assert summary["perception"] == pytest.approx(250)
    assert summary["cognition"] == pytest.approx(50)
    assert summary["score"] == pytest.approx(300)
    assert tasks.get("mme").unit == "points"


def test_mme_parquet_release(tmp_path, monkeypatch):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    table = pa.table({"question_id": ["count/1.jpg", "count/1.jpg"],
                      "image": [{"bytes": buf.getvalue(), "path": None}] * 2,
                      "question": ["Are there two cats? Please answer yes or no.",
                                   "Are there three cats? Please answer yes or no."],
                      "answer": ["Yes", "No"], "category": ["count", "count"]})
    pq.write_table(table, tmp_path / "test-00000.parquet")
    samples, summary = _score("mme", tmp_path, ["Yes", "No"])
    assert samples[0].image.is_file() and samples[0].meta["image"] == "count/1.jpg"
    assert summary["perception"] == pytest.approx(200)


def test_scienceqa_img_subset(tmp_path):
    _write(tmp_path / "problems.json", {
        "1": {"question": "Which is a mammal?", "choices": ["frog", "whale", "shark"], "answer": 1,
              "hint": "Look at the animals.", "image": "image.png", "subject": "natural science", "split": "test"},
        "2": {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "",
              "image": None, "subject": "language science", "split": "test"},
        "3": {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1, "hint": "",
              "image": "image.png", "subject": "natural science", "split": "test"}})
    _write(tmp_path / "pid_splits.json", {"test": ["1", "2", "3"], "val": []})
    _png(tmp_path / "images" / "test" / "1" / "image.png")
    _png(tmp_path / "images" / "test" / "3" / "image.png")
    samples, summary = _score("scienceqa", tmp_path, ["B", "The answer is A."])
    assert [s.id for s in samples] == ["1", "3"]  # the question without an image is not in the IMG subset
    assert samples[0].question == ("Context: Look at the animals.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
                                   "Answer with the option's letter from the given choices directly.")
    assert samples[1].question.startswith("Which is hot?\nA. ice")
    assert summary["score"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["vqav2", "gqa", "textvqa", "pope", "mme", "scienceqa"])
def test_bad_folders_fail_with_one_clear_error(tmp_path, name):
    task = tasks.get(name)
    with pytest.raises(ValueError, match="--data-dir"):
        task.load(None, None)
    with pytest.raises((FileNotFoundError, ValueError)):
        task.load(tmp_path, None)  # empty folder


def test_malformed_and_missing_images_are_named(tmp_path):
    _write(tmp_path / "testdev_balanced_questions.json", "{not json")
    with pytest.raises(ValueError, match="testdev_balanced_questions.json is not valid JSON"):
        tasks.get("gqa").load(tmp_path, None)
    _write(tmp_path / "testdev_balanced_questions.json", {"q1": {"imageId": "n9", "question": "?"}})
    with pytest.raises(ValueError, match="lacks one of imageId, question, answer"):
        tasks.get("gqa").load(tmp_path, None)
    _write(tmp_path / "testdev_balanced_questions.json", {"q1": {"imageId": "n9", "question": "?", "answer": "x"}})
    with pytest.raises(FileNotFoundError, match="n9.jpg"):
        tasks.get("gqa").load(tmp_path, None)


def test_synthetic_split_is_cached_per_generator_version(tmp_path, monkeypatch):
    """The default synthetic split is written once under ~/.cache and reused, but a cache written by another
    version of the generator is never read (it would hold other scenes and questions)."""
    from tokencomp.training import scenes

    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    stale = tmp_path / ".cache" / "tokencomp" / "synthetic-test-100"  # the layout before versioning
    _write(stale / "questions.json", [{"question_id": "x", "image": "a.png", "question": "q", "answers": ["old"]}])
    samples = tasks.get("synthetic").load(None, 5)
    expected = [q["question"] for i in range(3) for q in scenes.make_scene("test", i).questions][:5]
    assert [s.question for s in samples] == expected
    (written,) = [p for p in (tmp_path / ".cache" / "tokencomp").iterdir() if p != stale]
    assert written.name.startswith("synthetic-test-100-") and (written / "questions.json").is_file()
    again = tasks.get("synthetic").load(None, 5)
    assert [s.question for s in again] == expected
