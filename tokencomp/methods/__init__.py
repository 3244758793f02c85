"""Registry of compression methods: one file per method, one import line below per file.

A method is a function `(tokens [N, D], budget K, signals, **options) -> Compressed` decorated with
`@register(name, uses=...)`; it may assume 1 <= K < N (the dispatcher handles the rest). Methods registered
`batched=True` take [B, N, D] and per-item signals with a leading B, and run every image's greedy steps together.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from tokencomp.base import Compressed, Signals

MethodFn = Callable[..., Compressed]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    uses: tuple[str, ...]  # Signals fields the method reads; the serving layer computes only these
    generates: bool  # True: emits new tokens (merges) and an assignment; False: selects input tokens
    # True: the method's released code works on the vision tower's features before the projector, so an engine
    # that has them compresses those and projects the K outputs (which only matters for merges: the projector is
    # non-linear, and a mean of projections is not the projection of a mean)
    before_projector: bool = False
    # True: fn takes a batch [B, N, D] with per-item signals [B, ...] and returns Compressed fields with a leading
    # B (the dispatcher hands it single images as a batch of one)
    batched: bool = False

    def options(self) -> tuple[str, ...]:
        """Keyword options the method accepts beyond (tokens, budget, signals)."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


_REGISTRY: dict[str, Method] = {}


def register(name: str, *, uses: tuple[str, ...] = (), generates: bool = False, before_projector: bool = False,
             batched: bool = False) -> Callable[[MethodFn], MethodFn]:
    unknown = set(uses) - set(Signals.names())
    if unknown:
        raise ValueError(f"method {name!r} uses unknown signals {sorted(unknown)}; known: {Signals.names()}")

    def add(fn: MethodFn) -> MethodFn:
        _REGISTRY[name] = Method(name, fn, tuple(uses), generates, before_projector, batched)
        return fn

    return add


def available() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}") from None


from tokencomp.methods import (  # noqa: F401 - importing a module registers its method
    cdpruner,
    divprune,
    first,
    id_pruner,
    itg,
    mmr,
    none,
    pool,
    random_select,
    visionzip,
    vispruner,
)
