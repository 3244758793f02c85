"""Test session set-up: apply tokencomp's torchvision fix before any test module imports transformers, and one
`tokencomp serve` of a small random LLaVA shared by the serving test modules (start-up takes ~45 s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

import tokencomp  # noqa: F401
from tests.llava_fixture import make_llava
from tokencomp.serving.launcher import free_port, running
from tokencomp.serving.server import ServerConfig

API_KEY = "test-key"


@dataclass
class Served:
    model_dir: Path
    url: str  # http://host:port/v1
    log: Path  # the server's output


@pytest.fixture(scope="session")
def llava_served(tmp_path_factory):
    model_dir = make_llava(tmp_path_factory.mktemp("llava15") / "model")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    config = ServerConfig(model=str(model_dir), port=free_port(), api_key=API_KEY, served_model_name="llava")
    with running(config, log=log, env={"TOKENCOMP_LOG_KEPT": "1"}) as url:  # kept indices in the log
        yield Served(model_dir, url, log)


@pytest.fixture(scope="session")
def llava_client(llava_served):
    return openai.OpenAI(base_url=llava_served.url, api_key=API_KEY, max_retries=0, timeout=120)
