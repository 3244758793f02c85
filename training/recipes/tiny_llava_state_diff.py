"""Compare every tensor of two tiny-llava run folders: the saved model, the tower, the llm stage's checkpoint
(model, probe, both optimizers' state) and the cached features.

    python -m tokencomp.training.recipes.tiny_llava_state_diff RUN_A RUN_B

Prints, per file, the tensor count and the largest absolute difference (a nonzero count of differing entries
for integer tensors); exits 0 when every tensor is bitwise equal, 1 otherwise, 2 on a missing or mismatched
file. This is how the refactored recipe was shown to reproduce the earlier one's smoke run bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

FILES = ("model/model.safetensors", "tower.pt", "llm.pt")


def flatten(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) of every tensor inside nested dicts / lists / tuples, paths joined by "/"."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from flatten(value, f"{prefix}/{i}")


def tensor_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """0.0 when bitwise equal; else the max abs difference (floats) or the count of unequal entries (others).
    Bitwise, so +0.0 vs -0.0 or differing NaN payloads still count (as the smallest positive float)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
    if a.numel() == 0 or torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
        return 0.0
    if a.is_floating_point():
        diff = float((a.double() - b.double()).abs().nan_to_num(float("inf")).max())
    else:
        diff = float((a != b).sum())
    return diff if diff > 0 else torch.finfo(torch.float64).tiny


def _load(path: Path) -> dict[str, torch.Tensor]:
    obj = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=False)
    return dict(flatten(obj))


def compare(run_a: Path, run_b: Path) -> dict[str, tuple[int, float]]:
    """file -> (tensor count, largest difference) for FILES and every features_*.pt of run_a."""
    out = {}
    for rel in (*FILES, *sorted(p.name for p in run_a.glob("features_*.pt"))):
        a, b = _load(run_a / rel), _load(run_b / rel)
        if a.keys() != b.keys():
            raise ValueError(f"{rel}: tensors differ by name: {sorted(set(a) ^ set(b))[:5]}")
        out[rel] = (len(a), max((tensor_difference(a[k], b[k]) for k in a), default=0.0))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiny_llava_state_diff", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    try:
        result = compare(args.run_a, args.run_b)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tiny_llava_state_diff: error: {exc}", file=sys.stderr)
        return 2
    for rel, (count, diff) in result.items():
        print(f"{rel}: {count} tensors, max abs diff {diff}")
    total, worst = sum(c for c, _ in result.values()), max(d for _, d in result.values())
    print(f"all: {total} tensors, max abs diff {worst}")
    return 0 if worst == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
