"""Packed question-answer sequences of the tiny LLaVA recipe: one image and all its questions in one sequence
(`qa_sequence`), each turn seeing only the image and itself, and their padded batch with the turn mask
(`pad_batch`)."""

from __future__ import annotations

import numpy as np
import torch

from tokencomp.training.llava_loss import IGNORE


def qa_sequence(tokenizer, questions: list[dict], n_image_tokens: int, rng: np.random.Generator
                ) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(input ids, labels, owners, turns, positions) for one image and all its questions, packed: a shared prefix
    "USER: <image>*n" then, in random order, each question's " ... ASSISTANT: answer </s>" as if it were the
    only one. turns[t] is 0 on the prefix and i + 1 on the tokens of question i: `pad_batch` lets a turn see
    only the prefix and itself, so no turn reads another's answer (trained on one sequence, the LLM would
    otherwise learn to answer from earlier answers instead of the image) and every turn matches a single-
    question prompt at inference (positions restart after the prefix). Only answers (and their </s>) are trained
    on; owners[t] is the index of the question whose answer token t is (-1 elsewhere)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    eos = tokenizer.eos_token_id
    ids, labels, owners, turns, positions = [], [], [], [], []
    for i in rng.permutation(len(questions)):
        q = questions[int(i)]
        prompt = tokenizer("USER: " + q["question"] + " ASSISTANT:", add_special_tokens=False).input_ids
        if not ids:  # the shared prefix: "USER :" and the image
            prefix = 2 + n_image_tokens
            ids, labels, owners = prompt[:2] + [image_id] * n_image_tokens, [IGNORE] * prefix, [-1] * prefix
            turns, positions = [0] * prefix, list(range(prefix))
        answer = tokenizer(q["answer"], add_special_tokens=False).input_ids + [eos]
        ids += prompt[2:] + answer
        labels += [IGNORE] * (len(prompt) - 2) + answer
        owners += [-1] * (len(prompt) - 2) + [int(i)] * len(answer)
        turns += [int(i) + 1] * (len(prompt) - 2 + len(answer))
        positions += range(prefix, prefix + len(prompt) - 2 + len(answer))
    return ids, labels, owners, turns, positions


def pad_batch(rows: list[tuple[list[int], list[int], list[int], list[int], list[int]]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels, mask, positions, owners) from qa_sequence rows, padded on the right. mask [B, 1, L, L] is
    additive (0 or the dtype's minimum): a token sees the earlier tokens of the prefix and of its own turn. A
    padding token sees only itself."""
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    owners = torch.full((len(rows), width), -1)
    turns = torch.full((len(rows), width), -1)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row[0])
        for out, values in zip((ids, labels, owners, turns, positions), row):
            out[r, :n] = torch.tensor(values)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = (turns[:, :, None] == turns[:, None, :]) | (turns[:, None, :] == 0)
    allowed = (causal & same & (turns[:, None, :] >= 0)) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return ids, labels, mask[:, None], positions, owners
