"""`tokencomp train RECIPE [...]`: run a training recipe by name."""

from __future__ import annotations

import argparse
import importlib

from tokencomp.cli import add_named

RECIPES = {"tiny-llava": "tokencomp.training.recipes.tiny_llava",
           "visual-prompt": "tokencomp.training.recipes.visual_prompt",
           "optima": "tokencomp.training.recipes.optima",
           "sparse-sam-study": "tokencomp.training.recipes.sparse_sam_study",
           "sparse-llava": "tokencomp.training.recipes.sparse_llava",
           "moe-llava": "tokencomp.training.recipes.moe_llava"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_named(parser, "recipe", RECIPES)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(RECIPES[args.recipe]).main(args)
