"""The tiny LLaVA recipe's training-only layer probe (`LayerProbe`): linear read-outs of the LLM's hidden
state that supervise finding, comparing and reading inside the LLM; not saved with the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokencomp.training import scenes


class LayerProbe(torch.nn.Module):
    """Training-only deep supervision of the LLM (not saved with the model): linear read-outs of the hidden
    state after `layer` layers.

    - At each token that ends a mention of an object ("... the red circle ..."): that object's size and centre.
      Spatial and size questions compare two named objects; trained on answers alone the LLM never finds that
      circuit (it attends to both names alike and stays at the answer prior), but once every mention has
      fetched its own object halfway up, the layers above only compare two fixed-offset tokens. (In our trials
      on two-object scenes both families stayed at their priors without it, rose well above with it at layer
      2 of 4, and not at all with it at the last layer.)
    - At each token of a sign's text answer: the letter it is to spell next, so reading, too, fetches the
      letter patch in the middle of the LLM and the layers above only copy it out.
    - One layer higher, at the second mention of a question: how far the first named object lies right of and
      below the second, and how many size steps bigger it is (`relation_targets`). Mentions that each hold
      their object's place do not make a spatial answer by themselves: the LLM must subtract one from the
      other, a step that answers alone never taught it (spatial stayed at its prior even with mentions placed
      to ~15 px).
    """

    def __init__(self, width: int, layer: int = 2) -> None:
        super().__init__()
        self.layer = layer
        self.size = torch.nn.Linear(width, len(scenes.SIZES))
        self.position = torch.nn.Linear(width, 2)
        self.letter = torch.nn.Linear(width, len(scenes.LETTERS))
        self.relation = torch.nn.Linear(width, 3)

    def loss(self, hidden_states: tuple[torch.Tensor, ...], mentions: torch.Tensor | None, letters: torch.Tensor,
             relations: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """hidden_states from `lm_loss`; mentions [B, L, 3] from `mention_targets` (None: no mention targets),
        letters [B, L] from `letter_targets` and relations [B, L, 3] from `relation_targets` (None: none), for
        the same ids."""
        hidden, total, stats = hidden_states[self.layer], hidden_states[0].new_zeros(()), {}
        if mentions is not None and (where := mentions[..., 0] >= 0).any():
            state, target = hidden[where], mentions[where]
            size = self.size(state)
            guess, centre = self.position(state), target[:, 1:].to(state.dtype) / scenes.SIZE
            total = total + F.cross_entropy(size, target[:, 0]) + 5 * F.smooth_l1_loss(guess, centre, beta=0.02)
            stats["mention_size"] = float((size.argmax(-1) == target[:, 0]).float().mean())
            stats["mention_position_px"] = float((guess.detach() - centre).abs().mean()) * scenes.SIZE
        where = letters >= 0
        if where.any():
            logits = self.letter(hidden[where])
            total = total + F.cross_entropy(logits, letters[where])
            stats["reading"] = float((logits.argmax(-1) == letters[where]).float().mean())
        if relations is not None and (where := ~relations[..., 0].isnan()).any():
            guess = self.relation(hidden_states[self.layer + 1][where])
            target = relations[where].to(guess.dtype) / guess.new_tensor([scenes.SIZE, scenes.SIZE, 2])
            total = total + 5 * F.smooth_l1_loss(guess, target, beta=0.02)
            place, steps = guess.detach()[:, :2], guess.detach()[:, 2]
            stats["relation_px"] = float((place - target[:, :2]).abs().mean()) * scenes.SIZE
            stats["relation_sign"] = float(((place > 0) == (target[:, :2] > 0)).float().mean())
            if (differ := target[:, 2] != 0).any():
                stats["relation_size"] = float(((steps[differ] > 0) == (target[differ, 2] > 0)).float().mean())
        return total, stats
