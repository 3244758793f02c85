"""Graph proximity distillation (after Zheng et al., ECCV 2024, "Adapt without Forgetting"): a student keeps the
teacher's *relations* between the samples of a batch rather than the teacher's embeddings themselves.

A proximity graph over a batch is the row-softmax of scaled cosine similarities between two sets of embeddings;
the loss of sample i is the KL divergence from the teacher's row i to the student's. Three graphs are used:
image-image and text-text (intra-modal) and image-text (inter-modal, rows = a sample's image, columns = every
sample's text). The paper's abstract names these three relations; the cosine similarity, the single temperature
shared by the graphs and the KL direction (teacher || student, as in classic distillation) are our choices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRAPHS = ("image", "text", "pair")


def log_proximity(rows: torch.Tensor, columns: torch.Tensor, tau: float) -> torch.Tensor:
    """Log of the proximity graph [N, M]: log_softmax over j of cos(rows[i], columns[j]) / tau, from rows [N, D]
    and columns [M, D]."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    sim = F.normalize(rows, dim=-1) @ F.normalize(columns, dim=-1).T
    return torch.log_softmax(sim / tau, dim=-1)


def graph_kl(teacher_rows: torch.Tensor, teacher_columns: torch.Tensor, student_rows: torch.Tensor,
             student_columns: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row KL(teacher graph row || student graph row) [N] between the proximity graphs of the teacher's
    (rows [N, Dt], columns [M, Dt]) and the student's (rows [N, Ds], columns [M, Ds]) embeddings. Dt and Ds may
    differ: only similarities are compared. Exactly 0 where the student's embeddings equal the teacher's."""
    if teacher_rows.shape[0] != student_rows.shape[0] or teacher_columns.shape[0] != student_columns.shape[0]:
        raise ValueError(f"teacher graph {teacher_rows.shape[0]}x{teacher_columns.shape[0]} and student graph "
                         f"{student_rows.shape[0]}x{student_columns.shape[0]} must cover the same samples")
    log_t = log_proximity(teacher_rows.detach(), teacher_columns.detach(), tau)
    log_s = log_proximity(student_rows, student_columns, tau)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def proximity_loss(teacher: tuple[torch.Tensor, torch.Tensor], student: tuple[torch.Tensor, torch.Tensor],
                   tau: float, graphs: tuple[str, ...] = GRAPHS) -> torch.Tensor:
    """Per-sample graph proximity loss [N]: the sum over `graphs` of graph_kl, for teacher = (image [N, Dt],
    text [N, Dt]) and student = (image [N, Ds], text [N, Ds]) embeddings of the same N samples. 'image':
    image-image graph; 'text': text-text; 'pair': image rows against text columns."""
    unknown = set(graphs) - set(GRAPHS)
    if unknown or not graphs:
        raise ValueError(f"graphs must be a non-empty subset of {GRAPHS}, got {graphs}")
    (ti, tt), (si, st) = teacher, student
    pairs = {"image": (ti, ti, si, si), "text": (tt, tt, st, st), "pair": (ti, tt, si, st)}
    return sum(graph_kl(*pairs[g], tau) for g in graphs)
