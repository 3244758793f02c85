"""Draw which patches survived: kept patches bright, dropped ones dimmed; for generating methods every patch is
tinted by the output token it fed."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from tokencomp.base import Compressed


def _palette(k: int) -> np.ndarray:
    """k well-separated colours [k, 3] in 0..255 (golden-ratio hues)."""
    hues = (np.arange(k) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]) * 255


def overlay(image: Image.Image, compressed: Compressed, grid: int) -> Image.Image:
    """`image` as the model saw it (square, grid x grid patches) with the compression drawn on it."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    size = pixels.shape[0]
    patch = size // grid
    n = grid * grid
    if compressed.assignment is None:
        owner = np.full(n, -1)
        owner[compressed.index.numpy()] = np.arange(len(compressed.index))
        tint = None
    else:
        owner = compressed.assignment.numpy()
        tint = _palette(len(compressed.index))
    out = pixels * 0.25  # dropped patches stay dark
    for p in range(n):
        if owner[p] < 0:
            continue
        r, c = divmod(p, grid)
        block = (slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
        out[block] = pixels[block] if tint is None else 0.55 * pixels[block] + 0.45 * tint[owner[p]]
    if tint is not None:  # mark each generated token's anchor patch with a white frame
        for p in compressed.index.numpy():
            r, c = divmod(int(p), grid)
            y, x = r * patch, c * patch
            out[y, x:x + patch] = out[y + patch - 1, x:x + patch] = 255
            out[y:y + patch, x] = out[y:y + patch, x + patch - 1] = 255
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))
