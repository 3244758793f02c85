"""`tokencomp train RECIPE [...]`: run a training recipe by name; `tokencomp train --list` lists them.

A recipe is one runnable module under `training/recipes/` that owns its loop and exposes
`add_arguments(parser)` and `main(args) -> int`; its module docstring's first line is its description. Generic
components (step strategies, sparsifier, optimizers, LLaVA parts and losses) live in `training/`; a recipe's
own model- and data-specific pieces sit beside it in `training/recipes/`.
"""

from __future__ import annotations

import argparse
import importlib

from tokencomp.cli import add_named

RECIPES = {"tiny-llava": "tokencomp.training.recipes.tiny_llava",
           "visual-prompt": "tokencomp.training.recipes.visual_prompt",
           "optima": "tokencomp.training.recipes.optima",
           "sparse-sam-study": "tokencomp.training.recipes.sparse_sam_study",
           "sparse-llava": "tokencomp.training.recipes.sparse_llava",
           "moe-llava": "tokencomp.training.recipes.moe_llava",
           "dual-teacher": "tokencomp.training.recipes.dual_teacher"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true",
                        help="print every recipe with its description and exit")
    add_named(parser, "recipe", RECIPES, required=False)


def describe(name: str) -> str:
    """The first line of recipe `name`'s module docstring."""
    return importlib.import_module(RECIPES[name]).__doc__.splitlines()[0]


def run(args: argparse.Namespace) -> int:
    if args.list:
        width = max(map(len, RECIPES))
        for name in RECIPES:
            print(f"{name:<{width}}  {describe(name)}")
        return 0
    if args.recipe is None:
        raise ValueError("no recipe given; `tokencomp train --list` lists the recipes")
    return importlib.import_module(RECIPES[args.recipe]).main(args)
