"""The multimodal processor: runs in vLLM's API-server process, decides how many placeholders each image gets.

Per request it resolves the `tokencomp` spec (request kwargs over the server defaults in `hf_config.tokencomp`),
rejects bad input as a 400 before anything reaches the engine, writes the resolved spec back into the request's
kwargs so that vLLM's item hash — and so its processor, encoder and prefix caches — keys on it (plus the prompt's
token ids when the method reads the question), and emits K image placeholders instead of N.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import torch
from vllm.exceptions import VLLMValidationError
from vllm.model_executor.models.llava import LlavaMultiModalProcessor
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from tokencomp.serving import limits, spec
from tokencomp.serving.compression import template_edges
from tokencomp.serving.model_support import image_tokens, max_aspect_ratio, resolve_request
from tokencomp.serving.visual_prompt import server_prompt
from tokencomp.signals import question_ids


def _spec_of(payload: Mapping[str, object]) -> spec.Spec:
    """The resolved spec `apply` wrote into the kwargs (without the question ids it may carry)."""
    return spec.Spec(**{k: v for k, v in payload.items() if k != "text_ids"})


class TokenCompProcessing:
    """The per-request part every family's processor shares (mixed in before vLLM's processor for the family):
    a family says how many visual tokens each processed image has and which token id is its placeholder."""

    def _image_token_counts(self, out: Mapping[str, object]) -> list[int] | None:
        """Visual tokens [B] of each image in the HF processor's output, None when it holds no images."""
        raise NotImplementedError

    def _image_token_id(self) -> int:
        raise NotImplementedError

    def _adjust_pixels(self, out: dict) -> None:
        """A family's change to the processed pixels before anything reads them (none by default)."""

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        # Profiling must see the most placeholders a request can ask for: the unmodified model's.
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        return dataclasses.replace(inputs, hf_processor_mm_kwargs={spec.KEY: {"method": "none"}})

    def apply(self, inputs, timing_ctx):
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        try:
            resolved = resolve_request(kwargs, self.info.get_hf_config())
        except spec.SpecError as exc:
            raise VLLMValidationError(str(exc), parameter=exc.field) from None
        images = inputs.mm_data_items.get("image") if "image" in inputs.mm_data_items else None
        if isinstance(images, ImageProcessorItems):
            self._check_image_sizes(images)
        if resolved.method != "none" and images is not None and not isinstance(images, ImageProcessorItems):
            raise VLLMValidationError("tokencomp compresses pixel inputs only; image embeddings need method 'none'",
                                      parameter=f"{spec.P}.method")
        payload = dataclasses.asdict(resolved)
        if resolved.uses_text():
            payload["text_ids"] = question_ids(list(inputs.prompt), *self._template_edges, self._image_token_id())
            if not payload["text_ids"]:
                raise VLLMValidationError(f"method {resolved.method!r} reads the question, but the prompt has no text",
                                          parameter="messages")
        kwargs[spec.KEY] = payload  # the resolved spec is part of every item's hash from here on
        return super().apply(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)

    @functools.cached_property
    def _template_edges(self) -> tuple[list[int], list[int]]:
        return template_edges(self.info.get_hf_processor())

    def _check_image_sizes(self, images: ImageProcessorItems) -> None:
        bound = max_aspect_ratio(self.info.get_hf_config())
        for i in range(len(images)):
            if images.get(i) is None:
                continue  # sent by reference to an item the caches already hold
            width, height = images.get_image_size(i)
            why = limits.aspect_ratio_error(width, height, bound)
            if why:
                raise VLLMValidationError(f"image {i + 1}: {why}", parameter="messages")

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]):
        hf_kwargs = dict(hf_kwargs)
        payload = hf_kwargs.pop(spec.KEY)  # never reaches the HF processor
        out = super()._call_hf_processor(hf_data, hf_kwargs)
        counts = self._image_token_counts(out)
        if counts is None:
            return out
        self._adjust_pixels(out)
        out.update(spec.encode(_spec_of(payload), counts))
        text_ids = torch.tensor(payload.get("text_ids", []), dtype=torch.long)
        out["tc_text_ids"] = text_ids.repeat(len(counts), 1)
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for name in ("tc_spec", "tc_options", "tc_text_ids"):
            fields[name] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        resolved = _spec_of(hf_processor_mm_kwargs[spec.KEY])
        # the family's own code may build its HF processor from these kwargs (Qwen does): without ours
        hf_kwargs = {key: value for key, value in hf_processor_mm_kwargs.items() if key != spec.KEY}
        updates = super()._get_prompt_updates(mm_items, hf_kwargs, out_mm_kwargs)

        def shortened(update: PromptUpdate) -> PromptUpdate:
            def replacement(item_idx: int) -> list[int]:
                full = update.replacement(item_idx)
                return full[: resolved.tokens_out(len(full))]

            return PromptReplacement(modality="image", target=update.target, replacement=replacement)

        return [shortened(u) if u.modality == "image" else u for u in updates]


class TokenCompLlavaProcessor(TokenCompProcessing, LlavaMultiModalProcessor):
    def _image_token_counts(self, out: Mapping[str, object]) -> list[int]:
        return [image_tokens(self.info.get_hf_config())] * len(out["pixel_values"])

    def _image_token_id(self) -> int:
        return self.info.get_hf_config().image_token_index

    def _adjust_pixels(self, out: dict) -> None:
        prompt = server_prompt(self.info.get_hf_config())
        if prompt is not None:  # `tokencomp serve --visual-prompt`: before pruning sees the pixels
            out["pixel_values"] = prompt.apply(out["pixel_values"])
