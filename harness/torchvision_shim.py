"""Make `import torchvision` (and so `import timm`) work beside a CPU-only torch.

The torchvision 0.28.0 wheel that matches torch 2.13.0 is a CUDA build; on the CPU torch its C
extension does not load and torchvision's import dies registering fake kernels for ops whose
schemas were never defined (``operator torchvision::nms does not exist``). Defining the two
schemas first lets the pure-Python parts import; the C++ ops themselves stay unavailable, which is
why images are read with Pillow. See ../shared/spec/environment.md, "Installing".
"""

from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object would unregister the schemas


def extension_loads() -> bool:
    """True when torchvision's compiled extension registers its own ops."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to patch
    import glob
    import os

    for folder in spec.submodule_search_locations:
        for lib in glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd")):
            try:
                torch.ops.load_library(lib)
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure_torchvision_importable() -> bool:
    """Define the missing op schemas if, and only if, the extension failed to load.

    Returns True when the shim was applied.
    """
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return False
    if extension_loads():
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True
