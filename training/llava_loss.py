"""Next-token loss of a transformers LLaVA on token sequences whose image positions take precomputed tower
features (training on cached features skips the tower's forward and backward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

IGNORE = -100  # label of a position that is not trained on (cross_entropy's ignore_index)


def lm_loss(model: LlavaForConditionalGeneration, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
            positions: torch.Tensor, feats: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Mean cross-entropy over the labelled tokens. ids / labels / positions [B, L], mask [B, 1, L, L]
    additive (0 where a token may attend, the dtype's minimum elsewhere); feats [M, Dv]: the tower features of
    every image id in `ids`, row-major (a row may hold any number of image ids). Returns (loss, right
    [B, L - 1]: the token at each position after the first predicted right, the LLM's hidden states:
    embeddings, then the output of each layer)."""
    embed = model.get_input_embeddings()
    is_image = ids == model.config.image_token_index
    inputs = embed(ids.masked_fill(is_image, 0))
    projected = model.model.multi_modal_projector(feats).to(inputs.dtype)
    inputs = inputs.masked_scatter(is_image[..., None], projected)
    out = model.model.language_model(inputs_embeds=inputs, attention_mask=mask.to(inputs.dtype),
                                     position_ids=positions, output_hidden_states=True)
    logits = model.lm_head(out.last_hidden_state[:, :-1])
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)
    return loss, logits.argmax(-1) == target, out.hidden_states
