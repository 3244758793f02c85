"""Dual-teacher per-sample re-weighting for continual adaptation (after Zheng et al., ECCV 2024, "Adapt without
Forgetting"): teacher T0 is the original frozen model (what the model knew before any new task), T1 the frozen
model after the previous task (what the last task added). Each sample's distillation loss mixes the two:

    L_distil = mean_i [ w0_i * loss_i(T0, student) + w1_i * loss_i(T1, student) ],   w0_i + w1_i = 1, w in [0, 1].

The paper's abstract says only that the weights "dynamically adjust the influence of the teachers for each
individual sample". Our rule (`weights(..., mode="confidence")`): a teacher's confidence on a sample is the
largest probability of its next-token distribution where the sample's answer starts (no label needed, so
unlabelled reference samples get weights too), and w_k,i = c_k,i^(1/T) / (c_0,i^(1/T) + c_1,i^(1/T)): the
teacher that is surer about the sample gets more of it; T (`temperature`) sharpens (T < 1) or flattens (T > 1)
the split. Modes 'equal' (w = 1/2 each: both teachers, no re-weighting) and 't0' (w0 = 1: one teacher) are the
ablations.
"""

from __future__ import annotations

import torch

MODES = ("confidence", "equal", "t0")


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """[N] the largest softmax probability of each row of logits [N, V]."""
    return torch.softmax(logits.float(), dim=-1).amax(-1)


def weights(conf0: torch.Tensor, conf1: torch.Tensor, mode: str = "confidence", temperature: float = 1.0
            ) -> torch.Tensor:
    """[N, 2] per-sample weights (w0, w1) of teachers T0 and T1, each in [0, 1], each row summing to 1, from
    the teachers' confidences conf0, conf1 [N] in (0, 1] (see the module docstring for the modes)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if conf0.shape != conf1.shape or conf0.dim() != 1:
        raise ValueError(f"conf0 and conf1 must both be [N]; got {tuple(conf0.shape)} and {tuple(conf1.shape)}")
    if mode == "equal":
        return torch.full((len(conf0), 2), 0.5)
    if mode == "t0":
        return torch.stack([torch.ones(len(conf0)), torch.zeros(len(conf0))], dim=-1)
    logs = torch.stack([conf0, conf1], dim=-1).float().clamp_min(1e-12).log()
    return torch.softmax(logs / temperature, dim=-1)


def dual_teacher_loss(loss0: torch.Tensor, loss1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean_i (w[i, 0] * loss0[i] + w[i, 1] * loss1[i]) for per-sample losses loss0, loss1 [N] against T0 and
    T1 and weights w [N, 2] (treated as constants)."""
    w = w.detach().to(loss0.dtype)
    return (w[:, 0] * loss0 + w[:, 1] * loss1).mean()
