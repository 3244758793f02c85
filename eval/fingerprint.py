"""What identifies a model and a sample, so a log is never read for a different one.

A local model directory is identified by the digest of the files that decide its answers (weights, configs,
tokenizer, chat template), so retraining a model into the same folder starts new logs. A sample is identified by
its id, prompt, answers and its image's bytes; questions whose images have the same bytes share a cluster (for
the synthetic task: the questions of one scene).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from tokencomp.eval.sample import Sample

_MODEL_FILES = (".safetensors", ".bin", ".pt", ".json", ".jinja", ".model", ".txt")
_NOT_ANSWERS = {"eval.json", "training_config.json"}  # records of how it was made and scored, not used to answer


def model_identity(name: str) -> str:
    """`folder@digest` for a local model directory; a served model's name as it is otherwise."""
    path = Path(name)
    if not path.is_dir():
        return name
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in _MODEL_FILES and file.name not in _NOT_ANSWERS:
            digest.update(file.name.encode() + b"\0")
            digest.update(_file_digest(file).encode())
    return f"{path.resolve().name}@{digest.hexdigest()[:16]}"


def image_digest(path: Path) -> str:
    """The image file's content digest; a sample's cluster."""
    stat = path.stat()
    return _cached_image_digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=65536)
def _cached_image_digest(path: str, mtime_ns: int, size: int) -> str:  # a sweep asks once per setting
    return _file_digest(Path(path))[:16]


def cluster_of(sample: Sample) -> str:
    """The sample's cluster: its image's content digest (an unreadable image: its path)."""
    return image_digest(sample.image) if sample.image.is_file() else f"missing:{sample.image}"


def sample_fingerprint(sample: Sample) -> str:
    """Digest of the sample's id, prompt, answers and image bytes (unreadable images: their path)."""
    text = json.dumps([sample.id, sample.question, list(sample.answers), cluster_of(sample)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
