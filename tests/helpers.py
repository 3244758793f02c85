"""Small deterministic token sets with every signal a method may read; greedy answers with their log-probabilities
from a served model, for parity checks."""

from __future__ import annotations

import torch


def make_signals(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """tokens [n, d] with structure (clusters + noise) and every signal; n must be a square."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, d, generator=g)
    tokens = centres[torch.randint(0, 8, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    signals = {
        "cls_attn": torch.rand(n, generator=g).softmax(0),
        "text": torch.randn(5, d, generator=g),
        "keys": torch.randn(n, d, generator=g),
    }
    return tokens, signals


def greedy_with_logprobs(client, messages, body=None):
    reply = client.chat.completions.create(model="llava", messages=messages, max_tokens=5, temperature=0,
                                           logprobs=True, top_logprobs=5, extra_body=body or {})
    steps = reply.choices[0].logprobs.content
    return reply.choices[0].message.content, reply.usage.prompt_tokens, [
        {t.token: t.logprob for t in step.top_logprobs} for step in steps]


def max_logprob_difference(a: list[dict], b: list[dict]) -> float:
    assert [set(x) for x in a] == [set(y) for y in b], "the same top-5 tokens at every step"
    return max(abs(x[t] - y[t]) for x, y in zip(a, b) for t in x)
