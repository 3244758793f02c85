"""Procedural VQA scenes: 336x336 images of 1-8 shapes (and sometimes a sign with 2-4 letters), their scene
graph, per-patch labels for pre-training the vision tower, and one-word questions derived from the graph.

Everything is a pure function of (split, index): scene i of a split always renders the same pixels and
questions, and the splits draw from disjoint seed ranges.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE, PATCH = 336, 14
GRID = SIZE // PATCH  # 24
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 9, "medium": 20, "large": 34}  # radius in pixels; small objects cover one or two patches
LETTERS = "abcdefghkmnprstx"
SPLIT_SEEDS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
FAMILIES = ("colour", "shape", "count", "exist", "spatial", "size", "text")
POPE_SPLITS = ("random", "popular", "adversarial")
MAX_OBJECTS = 8
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    x: int  # centre, pixels
    y: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    objects: list[Obj]
    text: str | None = None  # letters on the sign, if any
    sign_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1
    background: tuple[int, int, int] = (235, 235, 235)
    questions: list[dict] = field(default_factory=list)


def _rng(split: str, index: int) -> random.Random:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEEDS)}; got {split!r}")
    return random.Random(SPLIT_SEEDS[split] + index)


def make_scene(split: str, index: int) -> Scene:
    """The scene graph of scene `index` of `split` (with its questions)."""
    rng = _rng(split, index)
    scene = Scene(objects=[], background=tuple(rng.randint(215, 250) for _ in range(3)))
    if rng.random() < 0.35:
        scene.text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4)))
        # Letter cells sit on the patch grid, one patch per letter (`letter_cells`); a letter split across two
        # patches would be half a glyph in each.
        w = 14 * len(scene.text) + 16
        x0 = PATCH * rng.randint(2, (SIZE - w) // PATCH) - 8
        y0 = PATCH * rng.randint(2, (SIZE - 40) // PATCH) - 8
        scene.sign_box = (x0, y0, x0 + w, y0 + 30)
    taken = [] if scene.sign_box is None else [((scene.sign_box[0] + scene.sign_box[2]) / 2,
                                                 (scene.sign_box[1] + scene.sign_box[3]) / 2, 44)]
    for _ in range(rng.randint(1, MAX_OBJECTS)):
        for _attempt in range(50):
            size = rng.choice(list(SIZES))
            r = SIZES[size]
            x, y = rng.randint(r + 4, SIZE - r - 4), rng.randint(r + 4, SIZE - r - 4)
            if all((x - tx) ** 2 + (y - ty) ** 2 > (r + tr + 6) ** 2 for tx, ty, tr in taken):
                scene.objects.append(Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), size, x, y))
                taken.append((x, y, r))
                break
    scene.questions = make_questions(scene, rng)
    return scene


def letter_cells(scene: Scene) -> list[tuple[int, int]]:
    """Top-left corner (x, y in pixels) of each sign letter's cell, left to right: one patch of the grid."""
    if not scene.text:
        return []
    x0, y0 = scene.sign_box[:2]
    return [(x0 + 8 + PATCH * i, y0 + 8) for i in range(len(scene.text))]


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), scene.background)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        r, fill = SIZES[o.size], COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((o.x - r, o.y - r, o.x + r, o.y + r), fill=fill)
        elif o.shape == "square":
            draw.rectangle((o.x - r, o.y - r, o.x + r, o.y + r), fill=fill)
        else:
            draw.polygon([(o.x, o.y - r), (o.x - r, o.y + r), (o.x + r, o.y + r)], fill=fill)
    if scene.text:
        draw.rectangle(scene.sign_box, fill=(255, 255, 255), outline=(0, 0, 0), width=2)
        font = ImageFont.load_default(size=17)
        for ch, (x, y) in zip(scene.text.upper(), letter_cells(scene)):
            left, top, right, _ = font.getbbox(ch)  # glyph centred in its cell
            draw.text((x + (PATCH - right - left) // 2, y - top + 1), ch, fill=(0, 0, 0), font=font)
    return image


def patch_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Per-patch targets [576] for tower pre-training, from the scene graph (0 = background / none):
    colour, shape, size and centre (x, y in pixels) of the object covering the patch centre, object id (for
    object-level pooling), centre (1 on the patch holding an object's centre: one per object, what counting
    needs), and the sign letter on the patch with its slot (1-4, left to right: what reading in order needs)."""
    centres = (np.arange(GRID) * PATCH + PATCH / 2)
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    names = ("colour", "shape", "size", "object", "x", "y", "centre", "letter", "slot")
    labels = {k: np.zeros((GRID, GRID), dtype=np.int64) for k in names}
    for i, o in enumerate(scene.objects, start=1):
        r = SIZES[o.size]
        if o.shape == "circle":
            inside = (cx - o.x) ** 2 + (cy - o.y) ** 2 <= r * r
        elif o.shape == "square":
            inside = (abs(cx - o.x) <= r) & (abs(cy - o.y) <= r)
        else:  # triangle: apex up; inside if below the two slanted edges
            t = (cy - (o.y - r)) / (2 * r)
            inside = (t >= 0) & (t <= 1) & (abs(cx - o.x) <= t * r)
        if not inside.any():  # a tiny object between patch centres still owns its nearest patch
            inside = np.zeros_like(inside)
            inside[min(GRID - 1, o.y // PATCH), min(GRID - 1, o.x // PATCH)] = True
        labels["colour"][inside] = list(COLOURS).index(o.colour) + 1
        labels["shape"][inside] = SHAPES.index(o.shape) + 1
        labels["size"][inside] = list(SIZES).index(o.size) + 1
        labels["object"][inside] = i
        labels["x"][inside], labels["y"][inside] = o.x, o.y
        labels["centre"][min(GRID - 1, o.y // PATCH), min(GRID - 1, o.x // PATCH)] = 1
    for slot, (ch, (x, y)) in enumerate(zip(scene.text or "", letter_cells(scene)), start=1):
        labels["letter"][y // PATCH, x // PATCH] = LETTERS.index(ch) + 1
        labels["slot"][y // PATCH, x // PATCH] = slot
    return {k: v.reshape(-1) for k, v in labels.items()}


def scene_labels(scene: Scene) -> np.ndarray:
    """Scene-level multi-hot target [len(COLOURS) * len(SHAPES) + 1] for the tower's CLS token: which
    (colour, shape) pairs occur, and whether there is a sign. Reading it off, CLS must attend to every object,
    so its attention ranks patches by salience the way importance-based pruning expects."""
    target = np.zeros(len(COLOURS) * len(SHAPES) + 1, dtype=np.float32)
    for o in scene.objects:
        target[list(COLOURS).index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)] = 1.0
    target[-1] = float(scene.text is not None)
    return target


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def unique(objects: list[Obj], key) -> list[Obj]:
    """The objects whose key (e.g. name, shape) no other object of the list shares."""
    counts: dict = {}
    for o in objects:
        counts[key(o)] = counts.get(key(o), 0) + 1
    return [o for o in objects if counts[key(o)] == 1]


def make_questions(scene: Scene, rng: random.Random) -> list[dict]:
    """Every family that the scene supports, one question each (two for existence: one yes, one no)."""
    objs, qs = scene.objects, []

    def add(family: str, question: str, answer: str, **extra) -> None:
        qs.append({"family": family, "question": question, "answer": answer, **extra})

    by_shape = unique(objs, lambda o: o.shape)
    if by_shape:
        o = rng.choice(by_shape)
        add("colour", f"What colour is the {o.shape}?", o.colour)
    by_colour = unique(objs, lambda o: o.colour)
    if by_colour:
        o = rng.choice(by_colour)
        add("shape", f"What shape is the {o.colour} object?", o.shape)
    shape = rng.choice(SHAPES)
    add("count", f"How many {shape}s are there?", NUMBERS[sum(o.shape == shape for o in objs)])
    present = {(o.colour, o.shape) for o in objs}
    kind = rng.choice(POPE_SPLITS)  # a POPE split holds its positives and negatives in equal numbers
    o = rng.choice(objs)
    add("exist", f"Is there {_a(o.colour)} {o.shape}?", "yes", pope=kind)
    negative = _negative(present, objs, kind, rng)
    if negative:
        add("exist", f"Is there {_a(negative[0])} {negative[1]}?", "no", pope=kind)
    named = unique(objs, lambda o: o.name)
    if len(named) >= 2:
        a, b = rng.sample(named, 2)
        if rng.random() < 0.5 and abs(a.x - b.x) > 24:
            add("spatial", f"Is the {a.name} left of the {b.name}?", "yes" if a.x < b.x else "no")
        elif abs(a.y - b.y) > 24:
            add("spatial", f"Is the {a.name} above the {b.name}?", "yes" if a.y < b.y else "no")
        if a.size != b.size:
            bigger = SIZES[a.size] > SIZES[b.size]
            add("size", f"Is the {a.name} bigger than the {b.name}?", "yes" if bigger else "no")
    if scene.text:
        add("text", "What does the sign say?", scene.text)
    return qs


def training_questions(scene: Scene, rng: random.Random, limit: int = 24, spatial_turns: int = 0) -> list[dict]:
    """Many questions about one scene for training (the evaluation splits keep `make_questions`' one or two
    per family): every question each family supports, drawn round-robin over the families in random order
    until `limit`, so a long sequence of turns keeps the rare families (size, text) in it. The first
    `spatial_turns` turns go to spatial questions, as many as the scene has."""
    objs = scene.objects
    pool: dict[str, list[tuple[str, str]]] = {f: [] for f in FAMILIES}
    for o in unique(objs, lambda o: o.shape):
        pool["colour"].append((f"What colour is the {o.shape}?", o.colour))
    for o in unique(objs, lambda o: o.colour):
        pool["shape"].append((f"What shape is the {o.colour} object?", o.shape))
    for shape in SHAPES:
        pool["count"].append((f"How many {shape}s are there?", NUMBERS[sum(o.shape == shape for o in objs)]))
    present = {(o.colour, o.shape) for o in objs}
    negatives = {_negative(present, objs, rng.choice(POPE_SPLITS), rng) for _ in present} - {None}
    pool["exist"] = [(f"Is there {_a(c)} {s}?", "yes") for c, s in sorted(present)]
    pool["exist"] += [(f"Is there {_a(c)} {s}?", "no") for c, s in sorted(negatives)]
    named = unique(objs, lambda o: o.name)
    for a in named:
        for b in named:
            if a is b:
                continue
            if abs(a.x - b.x) > 24:
                pool["spatial"].append((f"Is the {a.name} left of the {b.name}?", "yes" if a.x < b.x else "no"))
            if abs(a.y - b.y) > 24:
                pool["spatial"].append((f"Is the {a.name} above the {b.name}?", "yes" if a.y < b.y else "no"))
            if a.size != b.size:
                pool["size"].append((f"Is the {a.name} bigger than the {b.name}?",
                                     "yes" if SIZES[a.size] > SIZES[b.size] else "no"))
    if scene.text:
        pool["text"].append(("What does the sign say?", scene.text))
    for items in pool.values():
        rng.shuffle(items)
    order = [f for f in FAMILIES if pool[f]]
    rng.shuffle(order)
    qs: list[dict] = []

    def take(family: str) -> None:
        question, answer = pool[family].pop()
        qs.append({"family": family, "question": question, "answer": answer})

    while len(qs) < min(spatial_turns, limit) and pool["spatial"]:
        take("spatial")
    while len(qs) < limit and any(pool[f] for f in order):
        for family in order:
            if pool[family] and len(qs) < limit:
                take(family)
    return qs


def _negative(present: set, objs: list[Obj], kind: str, rng: random.Random) -> tuple[str, str] | None:
    """An absent (colour, shape): random; popular = a present shape in another colour; adversarial = a present
    colour and a present shape that never occur together (the pairing a model is most tempted to confirm)."""
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    if kind == "popular":
        absent = [(c, s) for c, s in absent if any(o.shape == s for o in objs)] or absent
    elif kind == "adversarial":
        absent = [(c, s) for c, s in absent if any(o.shape == s for o in objs) and any(o.colour == c for o in objs)] \
            or absent
    return rng.choice(absent) if absent else None


def write_split(split: str, count: int, out: Path, *, start: int = 0) -> Path:
    """Render `count` scenes of `split` into `out/images/` and write `out/questions.json` (the eval layout:
    a list of {question_id, image, question, answers, family, pope})."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        scene = make_scene(split, index)
        name = f"images/{split}_{index:06d}.png"
        render(scene).save(out / name)
        for j, q in enumerate(scene.questions):
            rows.append({"question_id": f"{split}-{index}-{j}", "image": name, "question": q["question"],
                         "answers": [q["answer"]], "family": q["family"], "pope": q.get("pope"),
                         "scene": index})
    path = out / "questions.json"
    path.write_text(json.dumps(rows, indent=1))
    return path
