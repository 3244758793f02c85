"""Layer-wise distillation of a shallower LLaVA student from a LLaVA teacher, module by module (OPTIMA's modules).

The student has the teacher's architecture and widths with fewer LLM layers; it shares the teacher's vision tower
(frozen, so training runs on cached tower features) and starts as a copy of the teacher's projector, embeddings,
final norm and head, with student block j copied from teacher block `layer_map[j]`. The map is uniform with the
first and the last blocks aligned: 2 of 4 layers -> teacher blocks 0 and 3 (zero-based). The first block must be
kept: on 16 val scenes (102 questions) the untrained copy of blocks 0 and 3 answered 44 % exactly, of 0 and 2
47 %, of 0 and 1 39 %, while the common "every other, last aligned" map (blocks 1 and 3) answered 0 % and blocks
2 and 3 1 % — the shipped LLM's first block does work on the raw embeddings that no later block replaces.

Modules (the bandit's arms pick among them): "projector" — the projected image rows; "llm.j" — the output of
student block j against the output of teacher block layer_map[j]. Each module's loss is the mean squared
difference over the valid tokens divided by the teacher's mean square there, so modules of different scale give
comparable rewards; it is exactly 0 where the student's module reproduces the teacher's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

IGNORE = -100


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher block (zero-based) each student block is paired with: evenly spaced, first with first and last with
    last (a one-block student keeps the first)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student_layers must be in [1, {teacher_layers}] (the teacher's depth), got {student_layers}")
    if student_layers == 1:
        return [0]
    return [round(j * (teacher_layers - 1) / (student_layers - 1)) for j in range(student_layers)]


def module_names(student_layers: int) -> list[str]:
    return ["projector", *(f"llm.{j}" for j in range(student_layers))]


def build_student(teacher: LlavaForConditionalGeneration, student_layers: int) -> LlavaForConditionalGeneration:
    """A copy of `teacher` with `student_layers` LLM blocks, block j copied from teacher block layer_map[j]."""
    layer_map = uniform_layer_map(student_layers, teacher.config.text_config.num_hidden_layers)
    config = copy.deepcopy(teacher.config)
    config.text_config.num_hidden_layers = student_layers
    student = LlavaForConditionalGeneration(config)
    state = teacher.state_dict()
    student.load_state_dict({name: state[_teacher_name(name, layer_map)] for name in student.state_dict()})
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def _teacher_name(student_name: str, layer_map: list[int]) -> str:
    prefix = "model.language_model.layers."
    if not student_name.startswith(prefix):
        return student_name
    j, rest = student_name[len(prefix):].split(".", 1)
    return f"{prefix}{layer_map[int(j)]}.{rest}"


@dataclass
class Outputs:
    """What distillation compares: projected [M, D] (the image rows the LLM receives), hidden (the LLM's
    embeddings then each block's output, each [B, L, D]) and logits [B, L, V]."""

    projected: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    logits: torch.Tensor


def forward(model: LlavaForConditionalGeneration, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            feats: torch.Tensor) -> Outputs:
    """ids/positions [B, L] and the additive mask [B, 1, L, L] of `tiny_llava_sequences.pad_batch`; feats
    [M, Dv]: the tower features of every image token in `ids`, row-major."""
    is_image = ids == model.config.image_token_index
    projected = model.model.multi_modal_projector(feats)
    embeds = model.get_input_embeddings()(ids.masked_fill(is_image, 0))
    embeds = embeds.masked_scatter(is_image[..., None], projected.to(embeds.dtype))
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask.to(embeds.dtype),
                                     position_ids=positions, output_hidden_states=True)
    return Outputs(projected, out.hidden_states, model.lm_head(out.last_hidden_state))


def _relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


def module_losses(student: Outputs, teacher: Outputs, layer_map: list[int], valid: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """Relative MSE per module (see the module docstring); valid [B, L] marks the tokens compared (not padding)."""
    losses = {"projector": _relative_mse(student.projected, teacher.projected)}
    for j, t in enumerate(layer_map):
        losses[f"llm.{j}"] = _relative_mse(student.hidden[j + 1][valid], teacher.hidden[t + 1][valid])
    return losses


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens: logits [B, L, V], labels [B, L] (IGNORE elsewhere)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions at the positions that predict an answer token
    (labels [B, L] as in `task_loss`), times temperature² (Hinton et al.), averaged over those positions."""
    where = labels[:, 1:] != IGNORE
    s = F.log_softmax(student_logits[:, :-1][where] / temperature, -1)
    t = F.log_softmax(teacher_logits[:, :-1][where] / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
