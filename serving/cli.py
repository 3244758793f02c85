"""`tokencomp serve [MODEL]`: the OpenAI-compatible vLLM server with per-request visual-token compression."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import tokencomp
from tokencomp.serving import spec
from tokencomp.serving.server import DEFAULT_MODEL, ServerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="local model directory (default: shipped)")
    parser.add_argument("--method", default="none", help=f"default method: {', '.join(tokencomp.methods.available())}")
    parser.add_argument("--budget", type=int, default=None, help="default visual tokens per image")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require this bearer token on every request")
    parser.add_argument("--max-images", type=int, default=4, help="images per request")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's own limit")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="CPU KV-cache size, GiB")
    parser.add_argument("--allow-media-domain", action="append", default=[], dest="media_domains",
                        help="allow image URLs from this host (repeatable); remote media is off by default")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--allow-local-media", default=None, metavar="DIR",
                        help="allow file:// images under DIR; off by default")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if not Path(args.model).is_dir():
        raise ValueError(f"model must be a local model directory; {args.model!r} is not one")
    spec.parse({"method": args.method, "budget": args.budget}, max_budget=10**9)  # fail before the slow start
    return ServerConfig(model=args.model, method=args.method, budget=args.budget, host=args.host, port=args.port,
                        api_key=args.api_key, max_images=args.max_images, max_model_len=args.max_model_len,
                        kv_cache_gib=args.kv_cache_gib, media_domains=args.media_domains,
                        local_media_path=args.allow_local_media,
                        max_image_pixels=args.max_image_pixels)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(f"tokencomp: serving {config.model} at http://{config.host}:{config.port}/v1 "
          f"(default method {config.method}, budget {config.budget})", flush=True)
    command = config.command()
    os.execvpe(command[0], command, config.env())
