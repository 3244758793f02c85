"""Make PyPI torchvision importable beside CPU torch (README: Known setup traps).

PyPI's torchvision is a CUDA build; next to `torch==2.13.0+cpu` its C ops fail to load and its import dies in
`torch.library.register_fake("torchvision::nms")` because the operator schema does not exist. Declaring the
schemas first lets the pure-Python parts (transforms) import. Applied only when the C ops are really missing.
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keep the Library object alive: dropping it would unregister the schemas


def _torchvision_ops_missing() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the probe
    except (AttributeError, RuntimeError):
        return True
    return False


def patch_torchvision() -> bool:
    """Declare torchvision's operator schemas when its C extension cannot provide them.

    Returns True when the schemas were declared by this call. Safe to call any number of times, in any process,
    before or after torch is imported; a no-op when torchvision is absent or healthy.
    """
    global _library
    if _library is not None or importlib.util.find_spec("torchvision") is None:
        return False
    if "torchvision" in sys.modules:  # already imported (successfully): nothing to fix
        return False
    if not _torchvision_ops_missing():
        return False
    try:
        _load_torchvision_extension()
    except OSError:
        pass
    if not _torchvision_ops_missing():
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True


def _load_torchvision_extension() -> None:
    """Try the real C extension first: a CPU build of torchvision registers its ops when it loads."""
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    for path in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        torch.ops.load_library(path)


class _TorchvisionHook:
    """A meta-path finder that applies `patch_torchvision` just before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            patch_torchvision()
        # let the normal finders import it


def install_import_hook() -> None:
    """Arm the fix for this interpreter without importing torch now (runs from a .pth file at start-up)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def write_pth() -> Path:
    """Install a .pth file so every interpreter of this environment — vLLM's server and the engine processes it
    spawns, which import torchvision before any plugin runs — arms the hook at start-up."""
    target = Path(sysconfig.get_paths()["purelib"]) / "tokencomp-torchvision-fix.pth"
    # Registered in sys.modules: it must outlive start-up (it holds the Library that keeps the schemas) and be
    # loaded once even when site reads the .pth twice (a venv's lib64 -> lib link).
    line = (
        "import sys, importlib.util as _u; _n = '_tokencomp_compat'; "
        f"_s = _u.spec_from_file_location(_n, {str(Path(__file__).resolve())!r}); "
        "_n in sys.modules or (sys.modules.__setitem__(_n, _u.module_from_spec(_s)), "
        "_s.loader.exec_module(sys.modules[_n])); sys.modules[_n].install_import_hook()\n"
    )
    target.write_text(line)
    return target
