"""Scoring with each benchmark's official semantics. Per-sample functions return what one answer is worth;
aggregates (POPE, MME) work over the records of a whole run, because their metrics are not sample means.

Records are the runner's log lines: {"prediction", "answers", "group", "meta", "score", ...}.
"""

from __future__ import annotations

import re
from collections import defaultdict

from tokencomp.eval.vqa_normalise import normalise_answer


def vqa_accuracy(prediction: str, answers: list[str] | tuple[str, ...], evalai: bool = False) -> float:
    """VQA soft accuracy: for each human i, min(1, #other humans who gave the prediction / 3), averaged over
    the humans (the 10 leave-one-out subsets). Both sides normalised the same way."""
    pred = normalise_answer(prediction, evalai)
    gts = [normalise_answer(a, evalai) for a in answers]
    if not gts:
        return 0.0
    matches = sum(g == pred for g in gts)
    per_human = [min(1.0, (matches - (g == pred)) / 3) for g in gts]
    return sum(per_human) / len(per_human)


def gqa_match(prediction: str, answer: str) -> float:
    """GQA exact match, after the post-processing the LLaVA-family scripts apply (strip, trailing periods,
    lower case); the official eval.py compares strings as they are."""
    return float(prediction.strip().rstrip(".").strip().lower() == answer.strip().lower())


def parse_yes_no(text: str) -> str | None:
    """'yes' / 'no' / None. Words after punctuation is removed: 'yes' without 'no'/'not' is yes, 'no' or 'not'
    without 'yes' is no; both or neither is unparsable (counted wrong, never guessed)."""
    words = set(re.sub(r"[^a-z ]", " ", text.lower()).split())
    yes, no = "yes" in words, bool(words & {"no", "not"})
    if yes != no:
        return "yes" if yes else "no"
    return None


def pope_split_metrics(records: list[dict]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = yes) and yes-ratio (share of *predictions* that are yes).
    An unparsable answer is wrong, and never a predicted yes."""
    pred = [parse_yes_no(r["prediction"]) for r in records]
    gold = [r["answers"][0].strip().lower() for r in records]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, gold))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(records)
    return {"accuracy": sum(p == g for p, g in zip(pred, gold)) / n if n else 0.0, "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": sum(p == "yes" for p in pred) / n if n else 0.0}


def pope_aggregate(records: list[dict]) -> dict:
    """Per split (group: random / popular / adversarial) and pooled; the headline `score` is the mean F1 over
    the splits present, as LLaVA-family papers report POPE."""
    splits = defaultdict(list)
    for r in records:
        splits[r["group"]].append(r)
    per_split = {name: pope_split_metrics(rows) for name, rows in sorted(splits.items())}
    return {"score": sum(m["f1"] for m in per_split.values()) / len(per_split) if per_split else 0.0,
            "splits": per_split, "pooled": pope_split_metrics(records)}


def parse_mme(text: str) -> str | None:
    """The MME tool's rule: an exact 'yes'/'no' (after stripping spaces and periods), else 'yes' or 'no' inside
    the first four characters, else unparsable."""
    text = text.strip().lower().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return None


MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_score(prediction: str, answers) -> float:
    return float(parse_mme(prediction) == answers[0].strip().lower())


def mme_aggregate(records: list[dict]) -> dict:
    """Per subtask: acc (questions) + acc+ (images with both questions right), each x100, so 0-200; perception
    sums its 10 subtasks, cognition its 4; the headline `score` is perception + cognition."""
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[r["group"]][r["meta"]["image"]].append(mme_score(r["prediction"], r["answers"]))
    subtasks = {}
    for name, images in sorted(by_task.items()):
        scores = [s for v in images.values() for s in v]
        acc = sum(scores) / len(scores)
        acc_plus = sum(all(v) for v in images.values()) / len(images)
        subtasks[name] = {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus)}
    perception = sum(v["score"] for k, v in subtasks.items() if k in MME_PERCEPTION)
    cognition = sum(v["score"] for k, v in subtasks.items() if k in MME_COGNITION)
    return {"score": perception + cognition, "perception": perception, "cognition": cognition,
            "subtasks": subtasks}


def extract_letter(text: str, letters: str) -> str | None:
    """The option letter of a multiple-choice answer, LLaVA's ScienceQA rules: the whole answer is one letter,
    or it starts with 'X.' / 'X)', or it says 'the answer is X'. None when none applies."""
    text = text.strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    match = re.match(r"^\(?([A-Z])[.):](\s|$)", text)
    if match and match.group(1) in letters:
        return match.group(1)
    match = re.search(r"[Aa]nswer is:?\s*\(?([A-Z])\b", text)
    if match and match.group(1) in letters:
        return match.group(1)
    return None


def mean_aggregate(records: list[dict]) -> dict:
    """The plain mean of per-sample scores, overall and per group."""
    groups = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r["score"])
    return {"score": mean([r["score"] for r in records]),
            "groups": {g: mean(v) for g, v in sorted(groups.items())}}


def mean(xs: list[float]) -> float:
    """The mean, NaN for no values (a setting whose every request failed)."""
    return sum(xs) / len(xs) if xs else float("nan")
