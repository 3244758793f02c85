"""`tokencomp demo`: launch the Gradio app (127.0.0.1 by default) on the shipped model or a given one."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokencomp.serving.server import DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="local model directory")
    parser.add_argument("--endpoint", default=None, help="answer through a running `tokencomp serve` (…/v1)")
    parser.add_argument("--api-key", default="none", help="API key of --endpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=Path, default=None,
                        help="folder of example images (PNG); default: a few generated test scenes")


def generated_examples(count: int = 6) -> list[Path]:
    """Render a few test-split scenes (the kind the shipped model was trained on) into a temporary folder."""
    import tempfile

    from tokencomp.training import scenes

    folder = Path(tempfile.mkdtemp(prefix="tokencomp-demo-"))
    paths = []
    for index in range(count):
        path = folder / f"scene_{index}.png"
        scenes.render(scenes.make_scene("test", index)).save(path)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    if not Path(args.model).is_dir():
        raise ValueError(f"model must be a local model directory; {args.model!r} is not one")
    from tokencomp.demo.app import build_app
    from tokencomp.demo.engine import Engine

    examples = sorted(args.examples.glob("*.png")) if args.examples else generated_examples()
    app = build_app(Engine(args.model, endpoint=args.endpoint, api_key=args.api_key), examples)
    app.launch(server_name=args.host, server_port=args.port, show_error=False)
    return 0
