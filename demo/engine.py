"""What answers the demo's questions: the model in-process (transformers, the same compression the served path
applies — tests/test_serving.py proves the outputs equal token for token) or a running `tokencomp serve`.

Either way the overlay is computed in-process from the same model's features, since a server returns answers,
not the kept patches.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tokencomp.base import Compressed
from tokencomp.serving import hf_reference
from tokencomp.serving.spec import Spec


@dataclass
class Result:
    answer: str
    prompt_tokens: int
    latency_s: float
    compressed: Compressed
    model_view: Image.Image  # the square crop the vision tower saw


class Engine:
    def __init__(self, model_dir: str | Path, endpoint: str | None = None, api_key: str = "none") -> None:
        self.model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        vision = self.model.config.vision_config
        self.grid = vision.image_size // vision.patch_size
        self.n_tokens = self.grid * self.grid
        self.client = None
        if endpoint:
            import openai

            self.client = openai.OpenAI(base_url=endpoint, api_key=api_key, max_retries=1, timeout=300)
            self.served_model = self.client.models.list().data[0].id

    def model_view(self, image: Image.Image) -> Image.Image:
        """The image after the processor's resize and centre crop, before normalisation."""
        ip = self.processor.image_processor
        side = ip.crop_size["height"]
        w, h = image.size
        scale = side / min(w, h)
        resized = image.convert("RGB").resize((max(side, round(w * scale)), max(side, round(h * scale))))
        left, top = (resized.width - side) // 2, (resized.height - side) // 2
        return resized.crop((left, top, left + side, top + side))

    def ask(self, image: Image.Image, question: str, spec: Spec, max_new_tokens: int = 8) -> Result:
        start = time.perf_counter()
        if self.client is None:
            local = hf_reference.answer(self.model, self.processor, image, question, spec, max_new_tokens)
            text, prompt_tokens, compressed = local.text, local.prompt_tokens, local.compressed
            latency = time.perf_counter() - start
        else:
            text, prompt_tokens = self._ask_endpoint(image, question, spec, max_new_tokens)
            latency = time.perf_counter() - start
            compressed = hf_reference.compress_image_for_question(self.model, self.processor, image, question, spec)
        return Result(text.strip(), prompt_tokens, latency, compressed, self.model_view(image))

    def _ask_endpoint(self, image: Image.Image, question: str, spec: Spec, max_new_tokens: int) -> tuple[str, int]:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        tc = {"method": spec.method} | ({"budget": spec.budget} if spec.budget else {})
        reply = self.client.chat.completions.create(
            model=self.served_model, max_tokens=max_new_tokens, temperature=0,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": question}]}],
            extra_body={"mm_processor_kwargs": {"tokencomp": tc}})
        return reply.choices[0].message.content, reply.usage.prompt_tokens

