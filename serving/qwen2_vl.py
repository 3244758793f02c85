"""Qwen2-VL and Qwen2.5-VL: vLLM's models with each image compressed per request, its kept tokens keeping their
M-RoPE positions. Runs in the engine process (the processors run in the API server).

Dynamic resolution: an image of t x h x w patches has N = t·h·w / 4 visual tokens (the 2 x 2 merger); the
processor resolves the budget per image (a count, or a fraction of N) and emits K placeholders. Signals: the
tower has no CLS token, so the importance of a patch is the mean attention it receives in the tower's last
block (its rotated q, k are read by a forward hook on that block's rotary step, computed over the whole image),
summed over the 4 patches a merged token covers; keys are the head-mean keys averaged the same way. Under
tensor parallelism each rank's hook sees only its share of the heads: the head means are summed across ranks
(`all_heads_mean`), so every rank keeps the same tokens. With `--mm-encoder-tp-mode data` (a replicated tower
that vLLM would give each rank only some of the images) a compressing batch runs every image on every rank.

Positions. Qwen's language model places visual token (t, h, w) of its merged grid at origin + (t, h, w), where
the origin follows the text before the image, and the text after the image resumes after the whole grid. A
compressed prompt's positions are the uncompressed prompt's with the dropped tokens' columns removed: kept tokens
keep their cell, and the text after the image keeps its positions (so the decode offset grows by N - K). vLLM
computes a request's positions when it is added (`get_mrope_input_positions`), before the tower has chosen; so
there every slot of a compressed image gets the image's origin, and the chosen cells travel with the embeddings
as 6 extra columns (each coordinate as a pair of base-128 digits, exact in bfloat16). `embed_input_ids` strips
them and `forward` adds them to that step's image rows. vLLM's own hook for this,
`SupportsMultiModalPruning.recompute_mrope_positions`, is called by the GPU runner only when
`--video-pruning-rate` is set (which also turns on EVS pruning of every video) and never by the CPU runner; this
way is the same on both, works with chunked prefill (each row carries its own cell) and with the encoder and
prefix caches (the cells are part of the cached output). Videos take vLLM's path untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from vllm.distributed import get_tensor_model_parallel_rank
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from tokencomp.serving import spec
from tokencomp.serving.compression import compress_image, merged_signals
from tokencomp.serving.model import LOG_KEPT, all_heads_mean, finite_rows, image_specs, logger
from tokencomp.serving.processor import TokenCompProcessing

CELL_COLUMNS = 6  # (t, h, w), each as (value // 128, value % 128)


def encode_cells(index: torch.Tensor, grid: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """The (t, h, w) grid cells [K, 6] of flat indices `index` [K] into a t x h x w grid, as digit pairs."""
    _, h, w = grid
    cells = torch.stack([index // (h * w), index % (h * w) // w, index % w], dim=1)
    return torch.cat([cells // 128, cells % 128], dim=1).to(dtype)


def decode_cells(columns: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_cells`: [K, 6] -> cells [3, K] (int64)."""
    digits = columns.float().round().long()
    return (digits[:, :3] * 128 + digits[:, 3:]).T


def compressed_positions(input_tokens: list[int], items: list[tuple[int, int, tuple[int, int, int], float, bool]]
                         ) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, L] and the decode offset of a prompt whose visual items are (offset, length, merged
    grid (t, h, w), seconds per temporal step, compressed?) in prompt order. A plain item's rows get their
    grid cells as vLLM computes them; a compressed item's rows get its origin (the cells are added at the engine
    step). Text resumes after each item's whole grid, compressed or not."""
    parts, start, next_pos = [], 0, 0
    for offset, length, (t, h, w), t_factor, compressed in items:
        text = offset - start
        parts.append(np.broadcast_to(np.arange(text), (3, text)) + next_pos)
        origin = next_pos + text
        if compressed:
            parts.append(np.full((3, length), origin))
        else:
            cells = np.indices((t, h, w)).reshape(3, -1)
            if t_factor != 1.0:
                cells[0] = (cells[0] * t_factor).astype(np.int64)
            parts.append(cells + origin)
        next_pos = origin + max(int((t - 1) * t_factor), h - 1, w - 1) + 1
        start = offset + length
    text = len(input_tokens) - start
    parts.append(np.broadcast_to(np.arange(text), (3, text)) + next_pos)
    positions = np.concatenate(parts, axis=1).astype(np.int64)
    return torch.from_numpy(positions), next_pos + text - len(input_tokens)


class _QwenProcessing(TokenCompProcessing):
    def _image_token_counts(self, out) -> list[int] | None:
        if "image_grid_thw" not in out:
            return None  # videos only: vLLM's path
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        return (out["image_grid_thw"].prod(-1) // merge**2).tolist()

    def _image_token_id(self) -> int:
        return self.info.get_hf_config().image_token_id


class TokenCompQwen2VLProcessor(_QwenProcessing, Qwen2VLMultiModalProcessor):
    pass


class TokenCompQwen2_5VLProcessor(_QwenProcessing, Qwen2_5_VLMultiModalProcessor):
    pass


def _is_compressed(feature) -> bool:
    data = feature.data
    if feature.modality != "image" or data is None or "tc_spec" not in data:
        return False
    return spec.decode(data["tc_spec"].data, data["tc_options"].data).method != "none"


class _QwenCompression:
    """What both Qwen generations add to vLLM's model (mixed in before it)."""

    _tc_pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (image-row mask, cells [3, M]) of this step

    def _to_patch_order(self, q: torch.Tensor, thw: list[int]) -> torch.Tensor:
        """One image's rows [S, ...] as the last block saw them, in the processor's patch order."""
        return q

    def embed_multimodal(self, **kwargs: object):
        tc, specs = image_specs(kwargs)
        if specs is None:
            return super().embed_multimodal(**kwargs)  # vLLM's own path: same tower call, nothing extra
        image_input = self._parse_and_validate_image_input(**kwargs)
        grids = image_input["image_grid_thw"].tolist()
        merge = self.visual.spatial_merge_size
        sizes = [t * h * w for t, h, w in grids]
        # The tower over every image on this rank, as vLLM calls it without `--mm-encoder-tp-mode data`; in that
        # mode vLLM would give each rank some of the images (its tower is replicated), so the hook would see only
        # those: here every rank runs them all and computes every image's signals itself.
        with self._last_block_qk() as captured:
            embeds = self.visual(image_input["pixel_values"], grid_thw=grids).split([n // merge**2 for n in sizes])
        (q, k), = captured
        out = []
        for b, (tokens, qb, kb, thw) in enumerate(zip(embeds, q.split(sizes), k.split(sizes), grids)):
            if specs[b].method == "none":
                out.append(tokens)
                continue
            grid = (thw[0], thw[1] // merge, thw[2] // merge)
            out.append(self._compress(tokens, self._to_patch_order(qb, thw), self._to_patch_order(kb, thw),
                                      grid, specs[b], tc["tc_text_ids"][b]))
        return tuple(out)

    def _compress(self, tokens: torch.Tensor, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int, int],
                  chosen: spec.Spec, text_ids: torch.Tensor) -> torch.Tensor:
        """One image: merged tokens [N, D], its last block's q, k [S = 4N, H', Dh] -> [K, D + 6]."""
        local_heads = q.shape[1]
        importance, keys = merged_signals(q.flatten(1), k.flatten(1), local_heads, q.shape[0] // tokens.shape[0])
        total_heads = self.config.vision_config.num_heads
        if local_heads < total_heads:
            importance, keys = (x[0] for x in all_heads_mean(importance[None], keys[None], local_heads, total_heads))
        text = self.language_model.embed_input_ids(text_ids.to(tokens.device)) if chosen.uses_text() else None
        t, h, w = grid
        compressed = compress_image(tokens, chosen, cls_attn=importance, keys=keys, features=None, project=None,
                                    grid=(t * h, w), text=text)
        kept = finite_rows(tokens, compressed.tokens, compressed.index, repr(chosen))
        if LOG_KEPT:
            logger.info("tokencomp: rank=%d method=%s kept=%s", get_tensor_model_parallel_rank(), chosen.method,
                        ",".join(map(str, compressed.index.tolist())))
        return torch.cat([kept, encode_cells(compressed.index.to(kept.device), grid, kept.dtype)], dim=1)

    @contextlib.contextmanager
    def _last_block_qk(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Collects (q, k) [S, H', Dh] of the tower's last block from its rotary step (both towers rotate
        q and k stacked on the first dimension, batch 1)."""
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []

        def keep(_module, _inputs, output):
            captured.append((output[0], output[1]))

        handle = self.visual.blocks[-1].attn.apply_rotary_emb.register_forward_hook(keep)
        try:
            yield captured
        finally:
            handle.remove()

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        if not any(_is_compressed(f) for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        ordered = sorted(mm_features, key=lambda f: f.mm_position.offset)
        items = [(offset, f.mm_position.length, (t, h, w), t_factor, _is_compressed(f))
                 for (offset, t, h, w, t_factor), f in zip(self.iter_mm_grid_thw(ordered), ordered)]
        return compressed_positions(input_tokens, items)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None, **kwargs):
        self._tc_pending = None
        width = self.config.text_config.hidden_size
        if multimodal_embeddings is not None and any(e.shape[-1] != width for e in multimodal_embeddings):
            cells = [decode_cells(e[:, width:]) if e.shape[-1] != width
                     else torch.zeros(3, e.shape[0], dtype=torch.long, device=e.device)
                     for e in multimodal_embeddings]
            self._tc_pending = (is_multimodal, torch.cat(cells, dim=1))
            multimodal_embeddings = [e[:, :width] for e in multimodal_embeddings]
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal, **kwargs)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        pending, self._tc_pending = self._tc_pending, None
        if pending is not None and inputs_embeds is not None:
            mask, cells = pending
            rows = mask.nonzero().squeeze(1).to(positions.device)
            positions = positions.clone()
            positions[:, rows] += cells.to(positions.device)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)


@MULTIMODAL_REGISTRY.register_processor(
    TokenCompQwen2VLProcessor, info=Qwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class TokenCompQwen2VL(_QwenCompression, Qwen2VLForConditionalGeneration):
    """Qwen2-VL: full attention in every tower block."""


@MULTIMODAL_REGISTRY.register_processor(
    TokenCompQwen2_5VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class TokenCompQwen2_5VL(_QwenCompression, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL: window attention reorders each image's merged units before the blocks (and back after the
    merger); its last block is a full-attention block in the released configurations."""

    def _to_patch_order(self, q: torch.Tensor, thw: list[int]) -> torch.Tensor:
        window_order, _ = self.visual.get_window_index_thw(*thw)
        unit = self.visual.spatial_merge_unit
        units = q.reshape(-1, unit, *q.shape[1:])
        restored = torch.empty_like(units)
        restored[window_order.to(q.device)] = units
        return restored.reshape(q.shape)
