"""The learnable padding prompt (Bahng et al. 2022): a frame of width p around the image, added to the
normalised pixels; the centre is never touched. Initialised at zero, so the untrained prompt is no prompt
(Bahng et al. start from random normal values; ILM-VP's sigmoid program starts at mid-grey)."""

from __future__ import annotations

from pathlib import Path

import torch

from tokencomp.serving.visual_prompt import add_prompt, frame_mask, save_visual_prompt


class PaddingPrompt(torch.nn.Module):
    """Parameters [3, S, S], of which only the frame's 4 * p * (S - p) * 3 entries receive gradient."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("frame", frame_mask(size, width))
        self.delta = torch.nn.Parameter(torch.zeros(3, size, size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] -> prompted [B, 3, S, S]."""
        return add_prompt(pixel_values, self.delta, self.frame)

    def trainable(self) -> int:
        """Number of prompt values that can change (3 channels x the frame's pixels)."""
        return 3 * int(self.frame.sum())

    def save(self, path: str | Path) -> Path:
        """Write the served artefact (`tokencomp serve --visual-prompt FILE` reads it)."""
        return save_visual_prompt(path, self.delta, self.width)
