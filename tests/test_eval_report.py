"""The report's statistics for aggregates that are not means (POPE's F1 over splits): the interval's estimate is
the task's own aggregate, a method paired with itself differs by exactly 0 (p = 1), and a method that is right
where the other says the opposite wins."""

from __future__ import annotations

import pytest
from PIL import Image

from tokencomp.eval import tasks
from tokencomp.eval.report import paired, score_interval
from tokencomp.eval.runner import Setting, answered
from tokencomp.eval.sample import Sample

POPE = tasks.get("pope")


@pytest.fixture
def samples(tmp_path):
    """12 POPE questions about 4 images (3 each), half of them 'yes', over two splits."""
    out = []
    for image in range(4):
        path = tmp_path / f"{image}.png"
        Image.new("RGB", (8, 8), (60 * image, 0, 0)).save(path)
        for j in range(3):
            i = 3 * image + j
            out.append(Sample(f"q{i}", path, f"Is there a thing {i}?", ("yes" if i % 2 else "no",),
                              "random" if i < 6 else "adversarial"))
    return out


def _records(samples, wrong: set[int]) -> list[dict]:
    flip = {"yes": "No.", "no": "Yes."}
    return [answered(POPE, s, flip[s.answers[0]] if i in wrong else s.answers[0].title(), 10, 0.01, "k")
            for i, s in enumerate(samples)]


def test_the_estimate_is_the_tasks_own_aggregate(samples):
    records = _records(samples, wrong={1, 4})
    interval = score_interval(POPE, records, replicates=200)
    assert interval.estimate == pytest.approx(POPE.aggregate(records)["score"])
    assert interval.low <= interval.estimate <= interval.high


def test_pope_paired_with_itself_is_a_tie_with_p_one(samples):
    ours, peer = Setting("itg", 8), Setting("mmr", 8)
    records = _records(samples, wrong={0, 5, 9})
    result = paired(POPE, 8, ours, peer, {ours: records, peer: list(records)}, replicates=200)
    d = result.test.difference
    assert (d.estimate, d.low, d.high, result.test.p_value, result.verdict) == (0.0, 0.0, 0.0, 1.0, "tie")
    assert (result.mcnemar_b, result.mcnemar_c, result.mcnemar_exact_p) == (0, 0, 1.0)


def test_pope_right_everywhere_against_wrong_on_every_image_wins(samples):
    ours, peer = Setting("itg", 8), Setting("mmr", 8)
    mine, theirs = _records(samples, wrong=set()), _records(samples, wrong={0, 4, 8, 9})  # one per image
    result = paired(POPE, 8, ours, peer, {ours: mine, peer: theirs}, replicates=200)
    expected = POPE.aggregate(mine)["score"] - POPE.aggregate(theirs)["score"]
    assert result.test.difference.estimate == pytest.approx(expected)
    assert result.test.difference.low > 0 and result.verdict == "win"
    assert (result.mcnemar_b, result.mcnemar_c) == (4, 0)
    assert result.mcnemar_exact_p == pytest.approx(2 / 2**4)
