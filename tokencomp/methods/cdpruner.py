"""CDPruner (Zhang et al., NeurIPS 2025): conditional DPP over the visual tokens, as in the authors' released code.

Similarity L = cosine between the (projected) tokens; relevance r = mean cosine between each token and the
instruction's embeddings, min-max normalised with the released code's +1e-6 offset (so the least relevant token
keeps a non-zero diagonal); conditional kernel L~ = diag(r) L diag(r). Greedy MAP inference of the DPP (maximise
log det L~_S) by incremental Cholesky updates (Chen et al., NeurIPS 2018), run for all K picks: O(N K^2).

Two readings, stated:
- Sign of the relevance. The released LLaVA code negates the mean cosine before normalising. That code scores
  CLIP image embeddings against CLIP text embeddings of the question, a joint space where the authors found
  patch embeddings anti-aligned with matching text; the paper's equation has no negation. Our relevance comes
  from the LLM's own input embeddings of the question (the released code's route for models without a CLIP text
  tower), a space with no such inversion, so we follow the paper: more similar means more relevant.
- Which words. The paper scores the bare question; so do the serving engines, which cut the chat template's
  fixed head and tail off the rendered prompt (`tokencomp.signals.question_ids`) before embedding it.
- Depth. The released loop has no rank guard: it picks K tokens by the largest Cholesky residual. Ours does the
  same; the only deviation is that a pick whose residual is not positive (rank exhausted, residual pure rounding)
  updates nothing instead of dividing by the square root of a non-positive number (NaN in the released code).
"""

from __future__ import annotations

import torch

from tokencomp.base import Compressed, Signals, cosine_matrix, selected
from tokencomp.methods import register
from tokencomp.signals import text_relevance

_RELEVANCE_OFFSET = 1e-6  # the released code's offset in its min-max normalisation


def greedy_map_dpp(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """K indices in pick order maximising log det greedily for a PSD kernel [N, N] -> [K], or a batch of kernels
    [B, N, N] -> [B, K] (float32, any device).

    d2_i is the squared Cholesky residual of candidate i given the picks (the factor by which picking i multiplies
    det L~_S); each step is an argmax and a [B, t] x [B, t, N] product, on the kernel's device."""
    if kernel.ndim == 2:
        return greedy_map_dpp(kernel[None], k)[0]
    b, n, _ = kernel.shape
    batch = torch.arange(b, device=kernel.device)
    d2 = torch.diagonal(kernel, dim1=1, dim2=2).clone()  # [B, N]
    factors = torch.zeros(b, k, n, dtype=kernel.dtype, device=kernel.device)
    picks = torch.empty(b, k, dtype=torch.long, device=kernel.device)
    for t in range(k):
        j = torch.argmax(d2, dim=1)
        picks[:, t] = j
        dj = d2[batch, j]
        scale = torch.where(dj > 0, dj.clamp_min(torch.finfo(d2.dtype).tiny).rsqrt(), 0.0)
        done = torch.einsum("bt,btn->bn", factors[batch, :t, j], factors[:, :t])
        e = (kernel[batch, j] - done) * scale[:, None]
        factors[:, t] = e
        d2 -= e * e
        d2[batch, j] = -torch.inf
    return picks


def relevance_scores(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """r [B, N] in (0, 1] for tokens [B, N, D] and text [B, T, D]: mean token-text cosine, min-max normalised per
    image with the released code's offset."""
    rel = text_relevance(tokens, text)
    low = rel.amin(dim=-1, keepdim=True)
    span = rel.amax(dim=-1, keepdim=True) - low
    return (rel - low + _RELEVANCE_OFFSET) / span.clamp_min(_RELEVANCE_OFFSET)


@register("cdpruner", uses=("text",), batched=True)
def cdpruner(tokens: torch.Tensor, k: int, signals: Signals) -> Compressed:
    if signals.text is None:
        raise ValueError("method 'cdpruner' needs text [T, D] (the instruction's token embeddings)")
    relevance = relevance_scores(tokens, signals.text)
    kernel = relevance[:, :, None] * cosine_matrix(tokens) * relevance[:, None, :]
    return selected(tokens, greedy_map_dpp(kernel, k))
