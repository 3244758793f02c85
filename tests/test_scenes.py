"""The procedural scene generator: determinism, disjoint splits, and answers checked against rendered pixels."""

from __future__ import annotations

import json
import random
from collections import deque

import numpy as np
import pytest

from tokencomp.training import scenes


def _blobs(pixels: np.ndarray, rgb: tuple[int, int, int]) -> list[set[tuple[int, int]]]:
    """4-connected regions of exactly this colour (objects never touch: placement keeps 6 px apart)."""
    mask = np.all(pixels == rgb, axis=-1)
    seen = np.zeros_like(mask)
    regions = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        region, queue = set(), deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            region.add((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < scenes.SIZE and 0 <= nx < scenes.SIZE and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        regions.append(region)
    return regions


def test_same_index_same_scene_and_pixels():
    for i in range(5):
        a, b = scenes.make_scene("train", i), scenes.make_scene("train", i)
        assert a == b
        assert np.array_equal(np.asarray(scenes.render(a)), np.asarray(scenes.render(b)))


def test_splits_are_disjoint():
    graphs = {split: [scenes.make_scene(split, i) for i in range(40)] for split in ("train", "val", "test")}
    as_key = lambda s: (tuple((o.shape, o.colour, o.size, o.x, o.y) for o in s.objects), s.text)
    keys = {split: {as_key(s) for s in g} for split, g in graphs.items()}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        scenes.make_scene("dev", 0)


def _named(scene: scenes.Scene, colour: str, shape: str) -> scenes.Obj:
    (o,) = [o for o in scene.objects if o.colour == colour and o.shape == shape]
    return o


def _check_answer(scene: scenes.Scene, pixels: np.ndarray, q: dict) -> None:
    """The answer follows from the scene graph (and, for colours, from the rendered pixels)."""
    words = q["question"].rstrip("?").split()
    if q["family"] == "count":
        shape = words[2].rstrip("s")
        assert q["answer"] == scenes.NUMBERS[sum(o.shape == shape for o in scene.objects)]
    elif q["family"] == "colour":
        (o,) = [o for o in scene.objects if o.shape == words[-1]]
        assert tuple(pixels[o.y + 2, o.x]) == scenes.COLOURS[q["answer"]]
    elif q["family"] == "shape":
        (o,) = [o for o in scene.objects if o.colour == words[4]]
        assert q["answer"] == o.shape
    elif q["family"] == "exist":
        colour, shape = words[-2], words[-1]
        assert (q["answer"] == "yes") == any(o.colour == colour and o.shape == shape for o in scene.objects)
    elif q["family"] in ("spatial", "size"):
        a, b = _named(scene, words[2], words[3]), _named(scene, words[-2], words[-1])
        truth = {"left": a.x < b.x, "above": a.y < b.y, "bigger": scenes.SIZES[a.size] > scenes.SIZES[b.size]}
        assert q["answer"] == ("yes" if truth[words[4]] else "no")
    else:
        assert q["family"] == "text" and q["answer"] == scene.text and 2 <= len(scene.text) <= 4


@pytest.mark.parametrize("index", range(12))
def test_graph_matches_pixels_and_answers_match_graph(index):
    scene = scenes.make_scene("test", index)
    pixels = np.asarray(scenes.render(scene))
    for name, rgb in scenes.COLOURS.items():  # one blob per object of each colour, centred on the object
        blobs = _blobs(pixels, rgb)
        objects = [o for o in scene.objects if o.colour == name]
        assert len(blobs) == len(objects)
        for o in objects:
            assert any((o.y, o.x) in b or (o.y + 2, o.x) in b for b in blobs)
    for q in scene.questions:
        _check_answer(scene, pixels, q)


def test_training_questions_are_many_right_and_keep_every_family():
    asked, families = [], set()
    for index in range(40):
        scene = scenes.make_scene("train", index)
        pixels = np.asarray(scenes.render(scene))
        qs = scenes.training_questions(scene, random.Random(index), limit=24)
        assert len(qs) <= 24 and len({q["question"] for q in qs}) == len(qs)
        for q in qs:
            _check_answer(scene, pixels, q)
        asked.append(len(qs))
        families |= {q["family"] for q in qs}
        if scene.text:
            assert any(q["family"] == "text" for q in qs), "round-robin keeps a family with one question"
    assert families == set(scenes.FAMILIES)
    assert np.mean(asked) > 3 * np.mean([len(scenes.make_scene("train", i).questions) for i in range(40)]) / 2


def test_every_family_and_pope_split_occurs_and_small_objects_exist():
    qs = [q for i in range(300) for q in scenes.make_scene("train", i).questions]
    assert {q["family"] for q in qs} == set(scenes.FAMILIES)
    assert {q["pope"] for q in qs if q["family"] == "exist"} == set(scenes.POPE_SPLITS)
    yes = sum(q["answer"] == "yes" for q in qs if q["family"] == "exist")
    assert 0.4 < yes / sum(q["family"] == "exist" for q in qs) < 0.6
    small = [o for i in range(50) for o in scenes.make_scene("train", i).objects if o.size == "small"]
    assert small and all(2 * scenes.SIZES[o.size] <= 2 * scenes.PATCH for o in small)


def test_patch_labels_mark_object_patches():
    scene = scenes.make_scene("train", 3)
    labels = scenes.patch_labels(scene)
    for i, o in enumerate(scene.objects, start=1):
        owned = labels["object"] == i
        assert owned.any(), "even a small object owns a patch"
        assert set(labels["colour"][owned]) == {list(scenes.COLOURS).index(o.colour) + 1}
        assert set(labels["shape"][owned]) == {scenes.SHAPES.index(o.shape) + 1}
        assert set(labels["x"][owned]) == {o.x} and set(labels["y"][owned]) == {o.y}
        centre = (o.y // scenes.PATCH) * scenes.GRID + o.x // scenes.PATCH
        assert labels["centre"][centre] == 1 and labels["object"][centre] in (i, 0)
    assert labels["centre"].sum() == len(scene.objects)


def test_sign_letters_are_labelled_in_reading_order():
    index = next(i for i in range(100) if scenes.make_scene("train", i).text)
    scene = scenes.make_scene("train", index)
    labels = scenes.patch_labels(scene)
    read = []  # the letter of each slot, left to right
    for slot in range(1, len(scene.text) + 1):
        (letter,) = set(labels["letter"][labels["slot"] == slot])
        read.append(scenes.LETTERS[letter - 1])
    assert "".join(read) == scene.text


def test_sign_letters_fill_one_patch_each():
    """Each letter's glyph lies inside the one patch labelled with it (letter cells sit on the patch grid),
    so every glyph renders to the same pixels wherever its sign is."""
    seen: dict[str, np.ndarray] = {}
    for index in range(60):
        scene = scenes.make_scene("train", index)
        if not scene.text:
            continue
        labels, image = scenes.patch_labels(scene), np.asarray(scenes.render(scene))
        x0, y0, x1, y1 = scene.sign_box
        ink = image.min(-1) < 100
        ink[:y0 + 3] = ink[y1 - 3:] = False  # the sign's inside only: no border, no objects
        ink[:, :x0 + 3] = ink[:, x1 - 3:] = False
        assert (labels["letter"] > 0).sum() == len(scene.text)
        for slot, ch in enumerate(scene.text, start=1):
            (k,) = np.flatnonzero(labels["slot"] == slot)
            r, c = divmod(int(k), scenes.GRID)
            cell = np.zeros_like(ink)
            cell[r * scenes.PATCH:(r + 1) * scenes.PATCH, c * scenes.PATCH:(c + 1) * scenes.PATCH] = True
            column = np.zeros_like(ink)
            column[:, x0 + 8 + 14 * (slot - 1):x0 + 22 + 14 * (slot - 1)] = True
            assert ink[cell].any() and not (ink & column & ~cell).any(), (index, ch)
            pixels = image[cell].reshape(scenes.PATCH, scenes.PATCH, 3)
            if ch in seen:
                assert np.array_equal(seen[ch], pixels), f"letter {ch} renders the same in every sign"
            seen[ch] = pixels
    assert len(seen) >= 8


def test_scene_labels_list_the_pairs_present_and_the_sign():
    scene = scenes.make_scene("train", 3)
    target = scenes.scene_labels(scene)
    pairs = {(c, s) for c in scenes.COLOURS for s in scenes.SHAPES
             if target[list(scenes.COLOURS).index(c) * len(scenes.SHAPES) + scenes.SHAPES.index(s)]}
    assert pairs == {(o.colour, o.shape) for o in scene.objects}
    assert target[-1] == float(scene.text is not None)


def test_write_split_is_the_eval_layout(tmp_path):
    path = scenes.write_split("test", 5, tmp_path)
    rows = json.loads(path.read_text())
    assert rows and {"question_id", "image", "question", "answers", "family"} <= set(rows[0])
    assert all((tmp_path / r["image"]).is_file() for r in rows)
    assert len({r["question_id"] for r in rows}) == len(rows)


def test_training_questions_put_spatial_turns_first():
    scene = next(g for g in (scenes.make_scene("train", i) for i in range(200))
                 if len(scenes.unique(g.objects, lambda o: o.name)) >= 4)
    plain = scenes.training_questions(scene, random.Random(3), 24)
    favoured = scenes.training_questions(scene, random.Random(3), 24, spatial_turns=5)
    assert [q["family"] for q in favoured[:5]] == ["spatial"] * 5
    assert [q["family"] for q in plain[:5]] != ["spatial"] * 5, "round-robin over families without it"
    assert len(favoured) == len(plain) == 24 and len({q["question"] for q in favoured}) == 24
    every = scenes.training_questions(scene, random.Random(3), 24, spatial_turns=100)
    spatial = sum(q["family"] == "spatial" for q in scenes.training_questions(scene, random.Random(3), 500))
    assert [q["family"] for q in every] == ["spatial"] * min(spatial, 24)
