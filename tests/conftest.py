"""Test session set-up: apply tokencomp's torchvision fix before any test module imports transformers."""

import tokencomp  # noqa: F401
