"""The torchvision trap (README: Known setup traps) is handled by `import tokencomp`, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def test_torchvision_and_vllm_llava_import_after_tokencomp():
    code = (
        "import tokencomp, torchvision.transforms.v2, vllm.model_executor.models.llava, transformers.image_utils; "
        "print(sorted(tokencomp.methods.available()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ["cdpruner", "divprune", "id_pruner", "itg", "mmr", "none", "pool", "random", "visionzip",
                 "vispruner"]:
        assert f"'{name}'" in proc.stdout
