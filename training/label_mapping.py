"""Label mappings from a frozen model's source classes S (here: its next-token vocabulary) to T target labels.

Every mapping is a weight matrix W [S, T] with columns summing to 1; the target scores of a sample are
log(p_source @ W) [T] with p_source [S] the source softmax, and training takes the cross-entropy of their softmax
over the T targets. For a one-to-one map (one-hot columns) that softmax is the softmax of the gathered source
logits, i.e. what RLM / FLM / ILM train; for a soft map a target's score is the probability that the source
prediction falls in its (weighted) set of source classes, which is what a target made of several source classes
needs. (BLM's release multiplies W with the source output; we mix probabilities, not logits, for every soft map
alike.)

- RLM (Chen et al. CVPR 2023): a random injective map target -> source.
- FLM (ibid.): counts N[s, t] of source argmax per target class; greedily take the largest count, assign, drop
  its row and column, repeat. ILM is FLM re-estimated with the current prompt every epoch (the recipe does it).
- BLM / BLM+ (Cai et al. NeurIPS 2024): W[s, t] = N[s, t] / (sum_t N[s, t] + lambda), then columns normalised;
  BLM+ accumulates each sample's top-k source probabilities instead of one-hot argmax counts.
- OTLM (Zheng et al. ECCV 2024; no released code, the cost below is our reconstruction): partial optimal
  transport of mass m between a = the mean source distribution [S] and b = the target class frequencies [T],
  cost C[s, t] = -log(mean p_source[s] over target-class-t samples); W = the plan's columns normalised.
  Only m of the unit mass moves, so source classes the target task never triggers stay behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ot
import torch

MAPPINGS = ("rlm", "flm", "ilm", "blm", "blm+", "otlm")
ITERATIVE = ("ilm", "blm", "blm+", "otlm")  # re-estimated with the current prompt at every epoch
_EPS = 1e-12


def one_hot_map(index: torch.Tensor, n_source: int) -> torch.Tensor:
    """W [S, T] with W[index[t], t] = 1 from a target -> source index [T]."""
    w = torch.zeros(n_source, len(index))
    w[index, torch.arange(len(index))] = 1.0
    return w


def random_mapping(n_source: int, n_target: int, generator: torch.Generator) -> torch.Tensor:
    """RLM: W [S, T] of a random injective target -> source map."""
    return one_hot_map(torch.randperm(n_source, generator=generator)[:n_target], n_source)


def counts(source_pred: torch.Tensor, labels: torch.Tensor, n_source: int, n_target: int) -> torch.Tensor:
    """N [S, T]: how many target-class-t samples have source argmax s (source_pred, labels [N])."""
    n = torch.zeros(n_source, n_target)
    n.index_put_((source_pred, labels), torch.ones(len(labels)), accumulate=True)
    return n


def frequency_mapping(n: torch.Tensor) -> torch.Tensor:
    """FLM: greedy one-to-one assignment on counts N [S, T] -> W [S, T]."""
    if n.shape[0] < n.shape[1]:
        raise ValueError(f"one-to-one mapping needs at least as many source as target classes; got {tuple(n.shape)}")
    n = n.clone().double()
    index = torch.empty(n.shape[1], dtype=torch.long)
    for _ in range(n.shape[1]):
        s, t = divmod(int(n.argmax()), n.shape[1])  # ties: the first in row-major order
        index[t] = s
        n[s, :] = -1.0
        n[:, t] = -1.0
    return one_hot_map(index, n.shape[0])


def _normalise_columns(w: torch.Tensor) -> torch.Tensor:
    total = w.sum(0, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(_EPS), torch.full_like(w, 1.0 / w.shape[0]))


def bayesian_mapping(n: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """BLM: W [S, T] from counts (or BLM+'s accumulated probabilities) N [S, T] with Laplace smoothing lam."""
    return _normalise_columns(n / (n.sum(1, keepdim=True) + lam))


def topk_probability_counts(probs: torch.Tensor, labels: torch.Tensor, n_target: int, k: int) -> torch.Tensor:
    """BLM+'s N [S, T]: each sample adds its top-k source probabilities (probs [N, S]) to its label's column."""
    top, idx = probs.topk(k, dim=1)
    n = torch.zeros(probs.shape[1], n_target)
    n.index_put_((idx.reshape(-1), labels.repeat_interleave(k)), top.reshape(-1).float(), accumulate=True)
    return n


def ot_cost(probs: torch.Tensor, labels: torch.Tensor, n_target: int) -> torch.Tensor:
    """C [S, T] = -log(mean source probability of s over the samples of target class t); probs [N, S]."""
    mean = torch.stack([probs[labels == t].mean(0) if (labels == t).any() else torch.zeros(probs.shape[1])
                        for t in range(n_target)], dim=1)
    return -torch.log(mean.double() + _EPS)


def partial_plan(a: np.ndarray, b: np.ndarray, cost: np.ndarray, mass: float, solver: str = "exact",
                 reg: float = 0.05) -> np.ndarray:
    """Partial OT plan P [S, T]: P >= 0, P 1 <= a, P^T 1 <= b, 1^T P 1 = mass. `solver` is "exact"
    (POT's ot.partial.partial_wasserstein, an EMD with a dummy reservoir point) or "entropic"
    (ot.partial.entropic_partial_wasserstein, Bregman projections with regulariser `reg`, cost scaled to max 1)."""
    if not 0 < mass <= min(a.sum(), b.sum()) + 1e-9:
        raise ValueError(f"mass must be in (0, min(|a|, |b|)] = (0, {min(a.sum(), b.sum()):.4g}]; got {mass}")
    if solver == "exact":
        return ot.partial.partial_wasserstein(a, b, cost, m=mass)
    if solver == "entropic":
        return ot.partial.entropic_partial_wasserstein(a, b, cost / cost.max(), reg, m=mass, numItermax=10000,
                                                       stopThr=1e-12)
    raise ValueError(f"solver must be 'exact' or 'entropic'; got {solver!r}")


def ot_mapping(probs: torch.Tensor, labels: torch.Tensor, n_target: int, mass: float = 0.9,
               solver: str = "exact") -> torch.Tensor:
    """OTLM: W [S, T] = the columns of the partial transport plan between the mean source distribution and the
    target class frequencies, normalised; probs [N, S], labels [N]."""
    a = probs.double().mean(0).numpy()
    a = a / a.sum()
    b = np.bincount(labels.numpy(), minlength=n_target).astype(np.float64) / len(labels)
    plan = partial_plan(a, b, ot_cost(probs, labels, n_target).numpy(), mass, solver)
    return _normalise_columns(torch.from_numpy(plan).float())


def estimate(name: str, probs: torch.Tensor, labels: torch.Tensor, n_target: int, *, generator: torch.Generator,
             lam: float = 1.0, topk: int = 1, mass: float = 0.9, solver: str = "exact") -> torch.Tensor:
    """W [S, T] of mapping `name` (one of MAPPINGS) from source probabilities [N, S] and target labels [N]."""
    n_source = probs.shape[1]
    if name == "rlm":
        return random_mapping(n_source, n_target, generator)
    if name in ("flm", "ilm"):
        return frequency_mapping(counts(probs.argmax(1), labels, n_source, n_target))
    if name == "blm":
        return bayesian_mapping(counts(probs.argmax(1), labels, n_source, n_target), lam)
    if name == "blm+":
        return bayesian_mapping(topk_probability_counts(probs, labels, n_target, topk), lam)
    if name == "otlm":
        return ot_mapping(probs, labels, n_target, mass, solver)
    raise ValueError(f"mapping must be one of {', '.join(MAPPINGS)}; got {name!r}")


def target_log_scores(probs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log(probs [N, S] @ W [S, T]) -> [N, T]: the mapped scores (logits of the target softmax)."""
    return torch.log(probs @ w.to(probs.dtype) + _EPS)


def save_label_map(path: str | Path, w: torch.Tensor, source_tokens: list[str], labels: list[str], *,
                   question: str, mapping: str) -> Path:
    """JSON artefact for `tokencomp eval --label-map FILE`: the question, the target labels, and for every
    source token with weight the target it votes for (its largest column of W) and the weights."""
    rows = {tok: {"target": labels[int(w[s].argmax())], "weights": [round(float(x), 6) for x in w[s]]}
            for s, tok in enumerate(source_tokens) if float(w[s].max()) > 0}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mapping": mapping, "question": question, "labels": labels, "sources": rows},
                               indent=1))
    return path


def load_label_map(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map file {str(path)!r} does not exist")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not {"labels", "sources"} <= data.keys():
        raise ValueError(f"{str(path)!r} is not a label map: expected keys 'labels' and 'sources'")
    return data


def map_answer(answer: str, label_map: dict) -> str | None:
    """The target label a model's text answer maps to (by its first word, the source class), or None when
    that word carries no weight in the map."""
    words = answer.strip().lower().split()
    row = label_map["sources"].get(words[0]) if words else None
    return None if row is None else row["target"]


def mapped_scorer(score: Callable[[str, object], float], label_map: dict) -> Callable[[str, object], float]:
    """A task scorer (prediction, sample) -> score that first maps the prediction to its target label (an
    unmapped answer scores as the empty string): what `tokencomp eval --label-map FILE` scores through."""
    def mapped(prediction: str, sample) -> float:
        return score(map_answer(prediction, label_map) or "", sample)
    return mapped
