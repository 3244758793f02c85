"""Requests a hostile or careless client sends, each of which the server must refuse with a 4xx and survive.

Shared by `bench soak` (mixed into live load) and the serving tests. Each entry turns a valid one-image chat
request into an invalid one: `make(messages, tc)` returns (messages, create() keyword arguments). Some are
refused before the image is processed (bad spec, bad media), some after it (sampling parameters, prompt
length): the latter once left vLLM's processor caches out of step, failing the user's corrected retry.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _replace_part(messages: list[dict], kind: str, part: dict) -> list[dict]:
    """The conversation with its last turn's content part of type `kind` replaced by `part`."""
    content = [part if old.get("type") == kind else old for old in messages[-1]["content"]]
    return [*messages[:-1], {**messages[-1], "content": content}]


def _with_image(messages: list[dict], data: bytes) -> list[dict]:
    return _replace_part(messages, "image_url", {"type": "image_url", "image_url": {"url": data_url(data)}})


def _question(messages: list[dict], text: str) -> list[dict]:
    return _replace_part(messages, "text", {"type": "text", "text": text})


def _spec(tc: dict) -> dict:
    return {"extra_body": {"mm_processor_kwargs": {"tokencomp": tc}}}


@dataclass(frozen=True)
class Hostile:
    name: str
    after_processing: bool  # refused only after the image went through the processor
    make: Callable[[list[dict], dict], tuple[list[dict], dict]]


HOSTILE = [
    Hostile("unknown method", False, lambda m, tc: (m, _spec({"method": "nope", "budget": 64}))),
    Hostile("budget 0", False, lambda m, tc: (m, _spec({"method": "itg", "budget": 0}))),
    Hostile("budget as a string", False, lambda m, tc: (m, _spec({"method": "id_pruner", "budget": "64"}))),
    Hostile("budget too large", False, lambda m, tc: (m, _spec({"method": "pool", "budget": 10**9}))),
    Hostile("budget with method none", False, lambda m, tc: (m, _spec({"method": "none", "budget": 64}))),
    Hostile("tau that overflows float32", False,
            lambda m, tc: (m, _spec({"method": "itg", "budget": 64, "options": {"tau": 1e-39}}))),
    Hostile("option of the wrong type", False,
            lambda m, tc: (m, _spec({"method": "itg", "budget": 64, "options": {"restore_norm": "no"}}))),
    Hostile("unknown processor kwarg", False, lambda m, tc: (m, {"extra_body": {"mm_processor_kwargs": {"size": 3}}})),
    Hostile("bad spec without an image", False,
            lambda m, tc: ([{"role": "user", "content": "hello"}], _spec({"method": "itg", "budget": -1}))),
    Hostile("truncated image", False, lambda m, tc: (_with_image(m, png(64, 64)[:60]), _spec(tc))),
    Hostile("20000x1 image", False, lambda m, tc: (_with_image(m, png(20000, 1)), _spec(tc))),
    Hostile("decompression bomb", False, lambda m, tc: (_with_image(m, png_bomb()), _spec(tc))),
    Hostile("max_tokens 0", True, lambda m, tc: (m, _spec(tc) | {"max_tokens": 0})),
    Hostile("temperature -1", True, lambda m, tc: (m, _spec(tc) | {"temperature": -1})),
    Hostile("top_logprobs 10000", True, lambda m, tc: (m, _spec(tc) | {"logprobs": True, "top_logprobs": 10000})),
    Hostile("prompt too long", True, lambda m, tc: (_question(m, "what " * 4000), _spec(tc))),
]
