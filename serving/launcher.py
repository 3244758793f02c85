"""Start a server process, wait until it is healthy, and always stop it: for tests, eval and benchmarks."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tokencomp.serving.server import ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(config: ServerConfig, *, log: Path, timeout_s: float = 600, env: dict | None = None) -> Iterator[str]:
    """Yield the base URL (`http://host:port/v1`) of a healthy server; its output goes to `log`."""
    base = f"http://{config.host}:{config.port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(config.command(), stdout=out, stderr=subprocess.STDOUT, env={**config.env(), **(env or {})})
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with status {proc.returncode} during start-up; see {log}")
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not healthy after {timeout_s:.0f} s; see {log}")
                time.sleep(1)
            yield f"{base}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
