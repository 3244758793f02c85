"""`tokencomp` console script: one entry point, sub-commands imported lazily (vLLM and torch load slowly)."""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> (module exposing `add_arguments(parser)` and `run(args) -> int`, help line)
_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("tokencomp.serving.cli", "start the OpenAI-compatible vLLM server with compression"),
    "eval": ("tokencomp.eval.cli", "run VQA benchmarks over methods x budgets"),
    "demo": ("tokencomp.demo.cli", "launch the Gradio demo"),
    "train": ("tokencomp.training.cli", "train a model with a recipe"),
    "bench": ("tokencomp.benchmarks", "benchmarks (select: selection latency)"),
}


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse would print the whole usage first)."""

    def error(self, message: str):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def add_named(parser: argparse.ArgumentParser, dest: str, modules: dict[str, str], required: bool = True) -> None:
    """Sub-parsers for a table name -> module exposing `add_arguments(parser)` (help: its docstring's 1st line).
    required=False leaves `dest` None when no name is given (the caller then says what to do)."""
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=required)
    for name, module_name in modules.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))


def _load(name: str):
    module_name, _ = _COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise CLIError(f"`tokencomp {name}` is not implemented yet") from None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog="tokencomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_line) in _COMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    name = "tokencomp"
    try:
        known, rest = parser.parse_known_args(argv[:1])
        name = f"tokencomp {known.command}"
        module = _load(known.command)
        cmd_parser = _Parser(prog=name)
        module.add_arguments(cmd_parser)
        args = cmd_parser.parse_args(argv[1:] + rest)
        return int(module.run(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
