"""Targets of the tiny LLaVA recipe's layer probe, per token of a packed batch: the object each "colour
shape" mention names (`mention_targets`), the offset between a question's two named objects
(`relation_targets`) and the sign letter each text-answer position spells next (`letter_targets`)."""

from __future__ import annotations

import torch

from tokencomp.training import scenes


def mention_targets(tokenizer, ids: torch.Tensor, graphs: list[scenes.Scene]) -> torch.Tensor:
    """[B, L, 3] (size index, centre x, centre y in pixels) of the object named at each token that ends a
    "colour shape" mention of an object the scene holds exactly once; -1 on every other token."""
    colours = {tokenizer.convert_tokens_to_ids(c): c for c in scenes.COLOURS}
    shapes = {tokenizer.convert_tokens_to_ids(s): s for s in scenes.SHAPES}
    out = torch.full((*ids.shape, 3), -1)
    for row, graph in enumerate(graphs):
        named = {o.name: o for o in scenes.unique(graph.objects, lambda o: o.name)}
        tokens = ids[row].tolist()
        for t in range(1, len(tokens)):
            o = named.get(f"{colours.get(tokens[t - 1])} {shapes.get(tokens[t])}")
            if o is not None:
                out[row, t] = torch.tensor([list(scenes.SIZES).index(o.size), o.x, o.y])
    return out


def relation_targets(tokenizer, ids: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
    """[B, L, 3] (centre x, y in pixels and size index of the first object a question names minus the second's)
    at the token that ends the second mention ("Is the red circle left of the blue square ?" -> at "square");
    NaN on every other token. mentions [B, L, 3] from `mention_targets` for the same ids; a question ends at
    its "?"."""
    end = tokenizer.convert_tokens_to_ids("?")
    out = torch.full((*ids.shape, 3), float("nan"))
    for row in range(len(ids)):
        first = None
        for t, token in enumerate(ids[row].tolist()):
            if token == end:
                first = None
            elif mentions[row, t, 0] >= 0:
                if first is None:
                    first = t
                else:
                    out[row, t] = (mentions[row, first] - mentions[row, t]).roll(-1).float()
    return out


def letter_targets(tokenizer, labels: torch.Tensor) -> torch.Tensor:
    """[B, L] index into scenes.LETTERS of the sign letter that the token after each position spells (a
    single-letter word piece, "a" or "##a", of a text answer); -1 elsewhere. Aligned like `mention_targets`:
    position t holds the letter that the logits at t predict."""
    table = torch.full((len(tokenizer),), -1)
    for i, c in enumerate(scenes.LETTERS):
        table[tokenizer.convert_tokens_to_ids(c)] = table[tokenizer.convert_tokens_to_ids(f"##{c}")] = i
    out = torch.full(labels.shape, -1)
    nxt = labels[:, 1:]
    out[:, :-1] = torch.where(nxt >= 0, table[nxt.clamp(min=0)], -1)
    return out
