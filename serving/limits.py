"""Bounds on the work one image may cause in the API-server process, and refusals that say what to change.

- Pixels: vLLM refuses an image whose header declares more than VLLM_MAX_IMAGE_PIXELS before decoding it, but
  Pillow's own decompression-bomb check fires earlier (inside `Image.open`, above twice its 89 M-pixel default)
  with an exception vLLM's loader does not catch, which became a 500. `install_image_guards` turns both into
  a 400 whose message is addressed to the client (the limit is a server setting, not theirs to change).
- Aspect ratio: a CLIP-style processor resizes the short side to the tower's size (336 px), so a 100-byte
  20000x1 PNG would be resized to 336 x 6.7 M pixels (tens of seconds and gigabytes). `aspect_ratio_error`
  bounds the long side: at the default 20:1 the resized image holds at most 336 x 6720 pixels.
"""

from __future__ import annotations

import functools
import re

from PIL import Image

DEFAULT_MAX_ASPECT_RATIO = 20.0
_VLLM_PIXEL_LIMIT = re.compile(r"Image dimensions (\d+)x(\d+) \((\d+) pixels\) exceed the maximum of (\d+) pixels")


def pixel_limit_message(max_pixels: int, size: tuple[int, int] | None = None) -> str:
    what = f"{size[0]}x{size[1]} ({size[0] * size[1]} pixels)" if size else "larger than Pillow decodes safely"
    return (f"image is {what}; this server accepts at most {max_pixels} pixels per image "
            f"(its --max-image-pixels setting): send a smaller image")


def aspect_ratio_error(width: int, height: int, max_ratio: float) -> str | None:
    """Why an image of this size is refused, or None if its aspect ratio is within bounds."""
    long, short = max(width, height), max(min(width, height), 1)
    if long / short <= max_ratio:
        return None
    return (f"image is {width}x{height} pixels (aspect ratio {long / short:.0f}:1); this server accepts aspect "
            f"ratios up to {max_ratio:g}:1 (its --max-image-aspect-ratio setting), because the image processor "
            f"scales the short side up to the model's input size and the work grows with the long side: crop "
            f"or pad the image")


def install_image_guards() -> None:
    """Make vLLM's image loader answer every over-sized image with a client-facing 400 (idempotent)."""
    from vllm import envs
    from vllm.multimodal.media.image import ImageMediaIO

    original = ImageMediaIO.load_bytes
    if getattr(original, "tokencomp_guarded", False):
        return

    @functools.wraps(original)
    def load_bytes(self, data: bytes):
        try:
            return original(self, data)
        except Image.DecompressionBombError:
            raise ValueError(pixel_limit_message(envs.VLLM_MAX_IMAGE_PIXELS)) from None
        except ValueError as exc:
            found = _VLLM_PIXEL_LIMIT.search(str(exc))
            if found is None:
                raise
            width, height, _, limit = (int(v) for v in found.groups())
            raise ValueError(pixel_limit_message(limit, (width, height))) from None

    load_bytes.tokencomp_guarded = True
    ImageMediaIO.load_bytes = load_bytes
