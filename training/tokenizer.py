"""Tokenizer and processor files for models trained on the procedural scenes.

A WordPiece vocabulary: every word the question templates and answers use, plus single letters and `##`
continuations, so any sign text (a string of letters) tokenises. A LLaVA chat template, the `<image>`
token, and a CLIP image processor, saved so that `AutoProcessor.from_pretrained(path)` works.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from tokencomp.training import scenes

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
TEMPLATE_WORDS = ["what", "colour", "is", "the", "shape", "object", "how", "many", "are", "there", "a", "an", "left", "of", "above", "bigger", "than", "does", "sign", "say", "user", "assistant", "yes", "no", "?", ":", ",", ".", "s"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or c['type'] == 'image_url' %}<image> {% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %} {% else %}ASSISTANT: {{ m['content'] }} </s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def vocabulary() -> list[str]:
    words = [*TEMPLATE_WORDS, *scenes.COLOURS, *scenes.SHAPES, *(s + "s" for s in scenes.SHAPES), *scenes.SIZES,
             *scenes.NUMBERS]
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    return list(dict.fromkeys(SPECIALS + words + letters + [f"##{c}" for c in letters]))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=32))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    size = scenes.SIZE
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer or build_tokenizer(),
                          patch_size=scenes.PATCH, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
