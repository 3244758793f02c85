"""Prometheus counters of visual tokens before and after compression, served on vLLM's own `/metrics`.

The processor runs in the API-server process, whose default registry `/metrics` exports, so counting there
sees every request (cache hits included) without touching the engine. The token counters count models with a
fixed patch grid (LLaVA); a Qwen2-VL image's N is known only once it is processed, so there only images count
(each response's `usage.prompt_tokens` has the total).
"""

from __future__ import annotations

from prometheus_client import Counter

from tokencomp.serving.spec import Spec

VISUAL_TOKENS_IN = Counter(
    "tokencomp_visual_tokens_in", "Visual tokens produced by the vision tower, before compression", ["method"]
)
VISUAL_TOKENS_OUT = Counter(
    "tokencomp_visual_tokens_out", "Visual tokens the language model received, after compression", ["method"]
)
IMAGES = Counter("tokencomp_images", "Images processed", ["method"])


def record(spec: Spec, *, images: int, n_in: int, n_out: int) -> None:
    IMAGES.labels(spec.method).inc(images)
    VISUAL_TOKENS_IN.labels(spec.method).inc(n_in)
    VISUAL_TOKENS_OUT.labels(spec.method).inc(n_out)
