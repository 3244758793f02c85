"""Random-init Qwen2-VL / Qwen2.5-VL checkpoints for engine tests, built offline: a byte-level BPE tokenizer
trained here with Qwen's special tokens and chat template, the Qwen2-VL image processor with small pixel
bounds (224 x 224 -> 64 image tokens after the 2 x 2 merger), and a tiny model of the exact architecture
(M-RoPE sections sized for head_dim 32, the smallest vLLM's CPU attention supports; Qwen2.5-VL with window
attention and one full-attention block). Saved with `save_pretrained`, the hub layout both engines load.
Also the noise-image conversations and the greedy request the Qwen serving tests share."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from tokencomp.benchmarks.hostile import data_url

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["what is the colour of the object in the image ?", "how many red circles are there ?",
          "is there a blue square left of the green triangle ? yes no", "user assistant system one two three"]


def make_tokenizer() -> Qwen2TokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_qwen(path: Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """family: "qwen2_vl" or "qwen2_5_vl"."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "initializer_range": 0.3, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    if family == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 4, "mlp_ratio": 2}
        config, model_class = Qwen2VLConfig(text_config=text, vision_config=vision, **ids), Qwen2VLForConditionalGeneration
    elif family == "qwen2_5_vl":
        vision = {"depth": 2, "hidden_size": 64, "out_hidden_size": 128, "intermediate_size": 128, "num_heads": 4,
                  "window_size": 112, "fullatt_block_indexes": [1]}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_class = Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"family must be 'qwen2_vl' or 'qwen2_5_vl', got {family!r}")
    model = model_class(config).eval()
    image_processor = Qwen2VLImageProcessor(min_pixels=224 * 224, max_pixels=224 * 224)
    video_processor = Qwen2VLVideoProcessor(min_pixels=224 * 224, max_pixels=224 * 224)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QUESTIONS = ["how many red circles are there ?", "what is the colour of the object in the image ?"]
N = 64  # visual tokens of a 224 x 224 image: 16 x 16 patches, 2 x 2 merged


def noise_conversation(seed: int) -> tuple[Image.Image, str, list[dict]]:
    """A 224 x 224 noise image, its question and the chat messages asking it. Not a scene: a scene's flat
    background gives exactly equal visual tokens, and between equal tokens a diversity method's pick is decided
    by rounding, which differs between vLLM's and transformers' kernels (measured: CDPruner's pick flips under
    1e-6 relative noise on a scene, under none of 5 draws of 1e-5 on noise)."""
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    question = QUESTIONS[seed % 2]
    return image, question, [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(buf.getvalue())}}, {"type": "text", "text": question}]}]


def ask(client, messages: list[dict], tc: dict) -> tuple[list[int], int, list[dict[int, float]]]:
    """(greedy token ids, prompt tokens, top-5 log-probabilities per step) of 5 greedy tokens under `tc`."""
    reply = client.chat.completions.create(
        model="llava", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=5,
        extra_body={"mm_processor_kwargs": {"tokencomp": tc}, "return_tokens_as_token_ids": True})
    steps = reply.choices[0].logprobs.content
    return ([_id(s.token) for s in steps], reply.usage.prompt_tokens,
            [{_id(t.token): t.logprob for t in s.top_logprobs} for s in steps])


def _id(token: str) -> int:
    return int(token.removeprefix("token_id:"))
