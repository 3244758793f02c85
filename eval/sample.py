"""What a task is made of: samples (one image, one prompt, the reference answers) and the task's scorers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    question: str  # the full prompt text, instructions included
    answers: tuple[str, ...]
    group: str  # sub-score key: question family, answer type, POPE split, MME subtask...
    meta: dict = field(default_factory=dict)  # what a scorer or aggregate needs besides (MME image, options)


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[Path | None, int | None], list[Sample]]
    score: Callable[[str, Sample], float]  # one answer's worth, logged per sample
    aggregate: Callable[[list[dict]], dict]  # answered records -> {"score": headline, ...details}
    max_tokens: int = 8
    unit: str = "%"  # "%": scores are fractions shown x100; "points": shown as they are (MME)
    splits: tuple[str, ...] = ()  # held-out splits `load` takes as split=...; the last is the default
