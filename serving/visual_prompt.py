"""A learned padding visual prompt as a served artefact: load it from its file and add it to pixel values.

The file (safetensors) holds `prompt` [3, S, S] (zero off the frame) and `frame` [S, S] (bool, True on the
frame of width p around the image). The prompt lives in the processor's normalised pixel space (after
rescale and mean/std), as the prompt was trained there; pixels off the frame come back bit for bit.

`tokencomp serve --visual-prompt FILE` puts the file's absolute path under `PROMPT_KEY` in the model's
hf_overrides; the multimodal processor then adds the prompt to every image's pixel values right after the
HF image processor (`server_prompt`), before token pruning sees them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def frame_mask(size: int, width: int) -> torch.Tensor:
    """Bool mask [size, size]: True on the border of `width` pixels, False in the centre."""
    if not 0 < 2 * width < size:
        raise ValueError(f"frame width must be in 1..{(size - 1) // 2} for a {size}-pixel image; got {width}")
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[width:size - width, width:size - width] = False
    return mask


def add_prompt(pixel_values: torch.Tensor, prompt: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """pixel_values [B, 3, S, S] + prompt [3, S, S] on the frame [S, S]; the centre is the input unchanged
    (a select, not an add of zeros: x + 0.0 would turn -0.0 into +0.0)."""
    if pixel_values.shape[-2:] != frame.shape:
        raise ValueError(f"pixel values are {tuple(pixel_values.shape[-2:])}, the prompt is for "
                         f"{tuple(frame.shape)}")
    return torch.where(frame, pixel_values + prompt.to(pixel_values.dtype), pixel_values)


@dataclass
class VisualPrompt:
    prompt: torch.Tensor  # [3, S, S]
    frame: torch.Tensor  # [S, S] bool

    @property
    def width(self) -> int:
        return int(self.frame[self.frame.shape[0] // 2].sum()) // 2

    def apply(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (or [3, S, S]) with the prompt added on the frame."""
        return add_prompt(pixel_values, self.prompt, self.frame)


def save_visual_prompt(path: str | Path, prompt: torch.Tensor, width: int) -> Path:
    """Write prompt [3, S, S] with its frame of `width` pixels (values off the frame are stored as 0)."""
    frame = frame_mask(prompt.shape[-1], width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt": (prompt.detach().float() * frame).contiguous(), "frame": frame.contiguous()}, str(path),
              metadata={"format": "tokencomp-visual-prompt", "width": str(width)})
    return path


def load_visual_prompt(path: str | Path) -> VisualPrompt:
    """The prompt saved by `save_visual_prompt`; a file without `prompt` [3, S, S] and `frame` [S, S] is an
    error naming what it holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"visual prompt file {str(path)!r} does not exist")
    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise ValueError(f"{str(path)!r} is not a visual prompt: not a safetensors file ({exc})") from None
    prompt, frame = tensors.get("prompt"), tensors.get("frame")
    if prompt is None or frame is None or prompt.dim() != 3 or prompt.shape[0] != 3 \
            or frame.shape != prompt.shape[1:] or frame.dtype != torch.bool:
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ValueError(f"{str(path)!r} is not a visual prompt: expected 'prompt' [3, S, S] and bool 'frame' "
                         f"[S, S]; found {found}")
    return VisualPrompt(prompt=prompt, frame=frame)


PROMPT_KEY = "tokencomp_visual_prompt"  # hf_overrides key of the server's prompt file


@functools.lru_cache(maxsize=4)
def _cached(path: str) -> VisualPrompt:
    return load_visual_prompt(path)


def server_prompt(hf_config) -> VisualPrompt | None:
    """The prompt a server was started with (`hf_config.tokencomp_visual_prompt`), loaded once; None without."""
    path = getattr(hf_config, PROMPT_KEY, None)
    return None if path is None else _cached(str(path))
