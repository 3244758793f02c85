"""`tokencomp train RECIPE [...]`: run a training recipe by name."""

from __future__ import annotations

import argparse
import importlib

RECIPES = {"tiny-llava": "tokencomp.training.recipes.tiny_llava"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for name, module in RECIPES.items():
        recipe = importlib.import_module(module)
        recipe.add_arguments(sub.add_parser(name, help=recipe.__doc__.splitlines()[0]))


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(RECIPES[args.recipe]).main(args)
