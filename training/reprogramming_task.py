"""The target task for visual reprogramming, and the frozen shipped model as its source classifier.

Target task ("palette"): circles on a dark background (the model only ever saw light backgrounds, 215-250),
1-3 of them, all drawn from one of three colour families, labelled with names the model never learnt:
ember = red or orange, meadow = green or yellow, tide = blue or purple. Each target class is therefore a union
of two of the model's colour answers, and the dark background shifts their rendering away from training.
Objects stay inside the centre, so a padding prompt of width <= `MARGIN` never covers them.

Source classes: the model's next-token distribution [V] after the fixed question `QUESTION` (the chat prompt
with the image), i.e. its whole answer vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image

from tokencomp.serving.hf_reference import prompt_ids
from tokencomp.training import scenes
from tokencomp.training.llava_parts import tower_features

LABELS = ("ember", "meadow", "tide")
PALETTES = {"ember": ("red", "orange"), "meadow": ("green", "yellow"), "tide": ("blue", "purple")}
QUESTION = "What colour is the circle?"
MARGIN = 56  # pixels from the border kept free of objects
BACKGROUND = (40, 40, 40)
SPLIT_SEEDS = {"train": 30_000_000, "test": 40_000_000}  # disjoint from the generator's own splits


def make_example(split: str, index: int) -> tuple[Image.Image, int]:
    """Image (336 x 336) and target label index of example `index` of `split` ("train" or "test")."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEEDS)}; got {split!r}")
    rng = random.Random(SPLIT_SEEDS[split] + index)
    label = rng.randrange(len(LABELS))
    scene = scenes.Scene(objects=[], background=BACKGROUND)
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(50):
            size = rng.choice(("medium", "large"))
            r = scenes.SIZES[size]
            x, y = (rng.randint(MARGIN + r, scenes.SIZE - MARGIN - r) for _ in range(2))
            if all((x - o.x) ** 2 + (y - o.y) ** 2 > (r + scenes.SIZES[o.size] + 6) ** 2 for o in scene.objects):
                colour = rng.choice(PALETTES[LABELS[label]])
                scene.objects.append(scenes.Obj("circle", colour, size, x, y))
                break
    return scenes.render(scene), label


def dataset(processor, split: str, count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel values [count, 3, 336, 336] and labels [count] of examples start..start+count-1."""
    examples = [make_example(split, i) for i in range(start, start + count)]
    pixels = processor.image_processor([im for im, _ in examples], return_tensors="pt").pixel_values
    return pixels, torch.tensor([label for _, label in examples])


def write_eval_split(split: str, count: int, out: str | Path) -> Path:
    """Render `count` examples into `out/images/` and write `out/questions.json` in the eval layout (see
    `scenes.write_split`), the target label as the answer: what `tokencomp eval --data-dir out --label-map FILE`
    scores a prompted server on. Question ids start with `split`, as the synthetic task expects."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image, label = make_example(split, index)
        name = f"images/palette_{split}_{index:06d}.png"
        image.save(out / name)
        rows.append({"question_id": f"{split}-palette-{index}", "image": name, "question": QUESTION,
                     "answers": [LABELS[label]], "family": "palette", "pope": None, "scene": index})
    path = out / "questions.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


class SourceClassifier(torch.nn.Module):
    """The frozen LLaVA answering `QUESTION`: pixel values [B, 3, S, S] -> next-token logits [B, V].

    Same computation as the transformers forward with the image token expanded to its 576 rows (the test
    checks it), except that the tower stops at its feature layer (-2): the last layer's output is unused."""

    def __init__(self, model, processor, question: str = QUESTION) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        ids = prompt_ids(processor, question)
        (pos,) = (ids == model.config.image_token_index).nonzero()[0].tolist()
        self.register_buffer("before", ids[:pos])
        self.register_buffer("after", ids[pos + 1:])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m, b = self.model, pixel_values.shape[0]
        image = m.model.multi_modal_projector(tower_features(m, pixel_values))
        embed = m.get_input_embeddings()
        x = torch.cat([embed(self.before).expand(b, -1, -1), image, embed(self.after).expand(b, -1, -1)], dim=1)
        hidden = m.model.language_model(inputs_embeds=x).last_hidden_state[:, -1]
        return m.lm_head(hidden)

    @torch.no_grad()
    def probabilities(self, pixel_values: torch.Tensor, prompt: torch.nn.Module | None = None,
                      batch: int = 32) -> torch.Tensor:
        """Source softmax [N, V] over pixel_values [N, 3, S, S] (optionally prompted), in batches."""
        out = []
        for i in range(0, len(pixel_values), batch):
            x = pixel_values[i:i + batch]
            out.append(self(x if prompt is None else prompt(x)).softmax(-1))
        return torch.cat(out)
