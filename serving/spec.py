"""The per-request compression spec: parsed from `mm_processor_kwargs["tokencomp"]`, validated, and turned into
the per-image tensors that carry it from the processor (API-server process) to the model (engine process).

Request body (chat completions):  "mm_processor_kwargs": {"tokencomp": {"method": "itg", "budget": 64}}
The budget is a count (an integer: keep that many visual tokens per image, or all of an image that has fewer) or
a fraction (a number in (0, 1): keep that share of each image's tokens, rounded half up, at least 1): with
dynamic resolution (Qwen2-VL) images differ in N, and a fraction scales with each.
Optional keys: "question_aware" (bool: mix the question's relevance into the importance of methods that can
use it), "seed" (int, for `random`), "options" (the method's own settings, e.g. {"tau": 0.1}).
Every error is a ValueError whose message names the field and the allowed values: vLLM answers it with HTTP 400.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

import tokencomp

KEY = "tokencomp"
P = f"mm_processor_kwargs.{KEY}"  # the request field, as errors name it
_FIELDS = ("method", "budget", "question_aware", "seed", "options")
_TRIAL_TOKENS = 16  # the dry run of a method's options: enough tokens for every method's bookkeeping


@dataclass(frozen=True)
class Spec:
    method: str = "none"
    budget: int | float | None = None  # a count, a fraction in (0, 1), or None: keep every token
    question_aware: bool = False
    seed: int = 0
    options: Mapping[str, float | int | bool] = field(default_factory=dict)

    def uses_text(self) -> bool:
        """Whether the instruction's embeddings are passed: methods that need them, or that can mix them in
        and were asked to (question-aware selection makes the kept tokens, and so the cache, per question)."""
        uses = tokencomp.methods.get(self.method).uses
        return "text" in uses and (self.question_aware or "cls_attn" not in uses)

    def tokens_out(self, n: int) -> int:
        """Visual tokens kept of an image with `n`."""
        if self.method == "none" or self.budget is None:
            return n
        if isinstance(self.budget, float):
            return max(1, math.floor(self.budget * n + 0.5))
        return min(self.budget, n)


class SpecError(ValueError):
    """A bad `tokencomp` request field; `field` is its dotted path in the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_fraction(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_int(value)
            and 0 < value < 1)


def parse(raw: object, *, max_budget: int, default: Spec | None = None) -> Spec:
    """Validate a request's `tokencomp` object (keys missing from it come from `default`)."""
    base = default or Spec()
    if raw is None:
        return base
    if not isinstance(raw, Mapping):
        raise SpecError(P, f"must be an object like {{\"method\": \"id_pruner\", \"budget\": 64}}, "
                           f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise SpecError(P, f"has unknown field(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    method = raw.get("method", base.method)
    methods = tokencomp.methods.available()
    if not isinstance(method, str) or method not in methods:
        raise SpecError(f"{P}.method", f"must be one of {', '.join(methods)}; got {method!r}")
    if method == "none" and raw.get("budget") is not None:
        raise SpecError(f"{P}.budget", "does not apply to method 'none', which keeps every visual token; "
                                       "drop the budget or choose a compressing method")
    budget = raw.get("budget", base.budget if base.method != "none" else None)
    allowed = f"an integer in [1, {max_budget}] (visual tokens per image) or a fraction in (0, 1) of each image's"
    if budget is not None and not (_is_int(budget) and 1 <= budget <= max_budget or _is_fraction(budget)):
        raise SpecError(f"{P}.budget", f"must be {allowed}; got {budget!r}")
    if method != "none" and budget is None:
        raise SpecError(f"{P}.budget", f"is required for method {method!r}: {allowed}")
    question_aware = raw.get("question_aware", base.question_aware)
    if not isinstance(question_aware, bool):
        raise SpecError(f"{P}.question_aware", f"must be true or false; got {question_aware!r}")
    seed = raw.get("seed", base.seed)
    if not _is_int(seed) or not 0 <= seed < 2**31:
        raise SpecError(f"{P}.seed", f"must be an integer in [0, 2^31); got {seed!r}")
    options = raw.get("options", base.options if method == base.method else {})
    options = _check_options(method, options)
    if method != "none":
        budget = int(budget) if _is_int(budget) else float(budget)
    return Spec(method, None if method == "none" else budget, question_aware, int(seed), options)


def option_defaults(method: str) -> dict[str, object]:
    """The method's keyword options and their defaults (a default's type is the option's type)."""
    params = inspect.signature(tokencomp.methods.get(method).fn).parameters
    return {name: params[name].default for name in tokencomp.methods.get(method).options()}


def _kind(default: object) -> str:
    if isinstance(default, bool):
        return "true or false"
    return "a finite number" + (" or null (the method's own schedule)" if default is None else "")


def _check_value(name: str, value: object, default: object) -> object:
    """`value` coerced to the option's type, or a SpecError naming `options.<name>`."""
    where = f"{P}.options.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(where, f"must be {_kind(default)}; got {value!r}")
        return value
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SpecError(where, f"must be {_kind(default)}; got {value!r}")
    return float(value)


def _check_options(method: str, options: object) -> dict[str, object]:
    """Names and types here; values by a dry run of the method itself, first with each option alone (so the
    error names it), then all together. Any exception or a non-finite output is a 400 in the API server: a
    value the method cannot digest must never reach the engine, where it would share a batch with others."""
    if not isinstance(options, Mapping):
        raise SpecError(f"{P}.options", f"must be an object; got {type(options).__name__}")
    defaults = option_defaults(method)
    checked = {}
    for name, value in options.items():
        if name not in defaults:
            allowed = f"allowed: {', '.join(defaults)}" if defaults else "this method takes no options"
            raise SpecError(f"{P}.options.{name}", f"is not an option of {method!r}; {allowed}")
        checked[name] = _check_value(name, value, defaults[name])
    checked = {name: value for name, value in checked.items() if value is not None}
    for name, value in checked.items():
        _trial(method, {name: value}, f"{P}.options.{name}")
    if len(checked) > 1:
        _trial(method, checked, f"{P}.options")
    return checked


def _trial(method: str, options: dict, where: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(_TRIAL_TOKENS, 4, generator=g)
    side = math.isqrt(_TRIAL_TOKENS)
    try:
        out = tokencomp.compress(x, _TRIAL_TOKENS // 4, method, cls_attn=torch.rand(_TRIAL_TOKENS, generator=g),
                                 text=x[:2], keys=x, features=x, grid=(side, side), **options)
    except Exception as exc:  # noqa: BLE001 - whatever the method raises, the request is at fault
        raise SpecError(where, f"is not accepted by method {method!r}: {exc}") from None
    if not torch.isfinite(out.tokens).all():
        raise SpecError(where, f"makes method {method!r} produce non-finite tokens; choose a value in its "
                               f"usual range")


def encode(spec: Spec, image_tokens: list[int]) -> dict[str, torch.Tensor]:
    """Per-image tensors that carry the spec to the engine for images of `image_tokens` [B] visual tokens each:
    ints [B, 4] (the budget resolved to each image's count) and the method's options [B, M] (M = the method's
    option count, NaN = its default)."""
    method_id = tokencomp.methods.available().index(spec.method)
    budgets = [0 if spec.budget is None else spec.tokens_out(n) for n in image_tokens]
    ints = torch.tensor([[method_id, k, spec.seed, int(spec.question_aware)] for k in budgets], dtype=torch.long)
    names = tokencomp.methods.get(spec.method).options()
    opts = torch.tensor([float(spec.options.get(name, float("nan"))) for name in names], dtype=torch.float64)
    return {"tc_spec": ints.reshape(len(budgets), 4), "tc_options": opts.repeat(len(budgets), 1)}


def decode(ints: torch.Tensor, opts: torch.Tensor) -> Spec:
    """Inverse of `encode` for one image's rows (options back in their declared types; the budget is the
    image's resolved count)."""
    method_id, budget, seed, question_aware = (int(v) for v in ints.tolist())
    method = tokencomp.methods.available()[method_id]
    defaults = option_defaults(method)
    options = {}
    for name, value in zip(defaults, opts.tolist()):
        if not math.isnan(value):
            options[name] = bool(value) if isinstance(defaults[name], bool) else value
    return Spec(method, budget or None, bool(question_aware), seed, options)
