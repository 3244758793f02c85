"""`tokencomp serve [MODEL]`: the OpenAI-compatible vLLM server with per-request visual-token compression."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from transformers import AutoConfig

import tokencomp
from tokencomp.serving import spec
from tokencomp.serving.limits import DEFAULT_MAX_ASPECT_RATIO
from tokencomp.serving.model_support import image_tokens, unsupported_reason
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig
from tokencomp.serving.visual_prompt import load_visual_prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="local model directory (default: shipped)")
    parser.add_argument("--method", default="none", help=f"default method: {', '.join(tokencomp.methods.available())}")
    parser.add_argument("--budget", type=_budget, default=None,
                        help="default budget: visual tokens per image (an integer) or a fraction in (0, 1) of each "
                             "image's tokens")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer token on every request")
    parser.add_argument("--max-images", type=int, default=None,
                        help="images per request (default: as many uncompressed images as the context holds)")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's own limit")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="CPU KV-cache size, GiB")
    parser.add_argument("--allow-media-domain", action="append", default=[], dest="media_domains",
                        help="allow image URLs from this host (repeatable); remote media is off by default")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="refuse larger images, before decoding them (decompression-bomb guard)")
    parser.add_argument("--max-image-aspect-ratio", type=float, default=DEFAULT_MAX_ASPECT_RATIO,
                        help="refuse images whose long side exceeds this multiple of the short side")
    parser.add_argument("--processor-cache-gib", type=float, default=1.0,
                        help="vLLM's processed-image cache, in shared memory (0: off)")
    parser.add_argument("--allow-local-media", default=None, metavar="DIR",
                        help="allow file:// images under DIR; off by default")
    parser.add_argument("--visual-prompt", default=None, metavar="FILE",
                        help="add this learned padding prompt (tokencomp train visual-prompt) to every image")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if not Path(args.model).is_dir():
        raise ValueError(f"model must be a local model directory; {args.model!r} is not one")
    for name in ("max_images", "max_image_pixels", "max_image_aspect_ratio", "processor_cache_gib"):
        value = getattr(args, name)
        low = 0 if name == "processor_cache_gib" else 1
        if value is not None and not value >= low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    _check_default(args.model, args.method, args.budget)  # fail before the slow start
    if args.visual_prompt:
        load_visual_prompt(args.visual_prompt)  # a missing or wrong file is one line, before the slow start
    return ServerConfig(model=args.model, method=args.method, budget=args.budget, host=args.host, port=args.port,
                        api_key=args.api_key, max_images=args.max_images, max_model_len=args.max_model_len,
                        kv_cache_gib=args.kv_cache_gib, media_domains=args.media_domains,
                        local_media_path=args.allow_local_media,
                        max_image_pixels=args.max_image_pixels, max_image_aspect_ratio=args.max_image_aspect_ratio,
                        processor_cache_gib=args.processor_cache_gib, visual_prompt=args.visual_prompt)


def _budget(text: str) -> int | float:
    """`--budget 64` is a count, `--budget 0.25` a fraction (the range is checked with the model's limits)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer or a fraction in (0, 1); got {text!r}") from None


def _check_default(model: str, method: str, budget: float | None) -> None:
    """The server default must be one the model can apply: a supported model, a budget within its tokens."""
    config = AutoConfig.from_pretrained(model)
    n = image_tokens(config)
    try:
        resolved = spec.parse({"method": method} | ({} if budget is None else {"budget": budget}), max_budget=n)
    except spec.SpecError as exc:
        flag = "--" + exc.field.rsplit(".", 1)[-1]
        raise ValueError(f"{flag} {str(exc).removeprefix(exc.field).strip()}") from None
    why = unsupported_reason(config, resolved.method)
    if resolved.method != "none" and why:
        raise ValueError(f"--method {method}: {why}")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(f"tokencomp: serving {config.model} at http://{config.host}:{config.port}/v1 "
          f"(default method {config.method}, budget {config.budget})", flush=True)
    command = config.command()
    os.execvpe(command[0], command, config.env())
