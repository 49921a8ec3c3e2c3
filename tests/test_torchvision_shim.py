"""The torchvision shim (harness/torchvision_shim.py): applied only when the C extension fails to load.

Each check runs in a fresh interpreter, because the shim acts once, before the first torchvision
import, and a test process has usually imported torchvision already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import harness.torchvision_shim as shim

SHIM_FILE = Path(shim.__file__)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180)


def _load_shim_alone() -> str:
    """Code that loads the shim module without importing the harness package (which applies it)."""
    return f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("shim_alone", {str(SHIM_FILE)!r})
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
    """


def test_plain_import_fails_exactly_when_the_extension_does_not_load():
    result = _python("import torchvision; print('imported', torchvision.__version__)")
    if shim.extension_loads():
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert "operator torchvision::nms does not exist" in result.stderr


def test_importing_harness_first_makes_torchvision_and_timm_work():
    result = _python("""
        import harness
        import harness.torchvision_shim as shim
        import torch, torchvision, timm
        import torchvision.transforms.v2
        model = timm.create_model("resnet18", pretrained=False, num_classes=3)
        print(tuple(model(torch.zeros(1, 3, 64, 64)).shape), shim._library is not None, shim.extension_loads())
        print(shim.ensure_torchvision_importable())
    """)
    assert result.returncode == 0, result.stderr
    shape, applied, loads = result.stdout.splitlines()[0].rsplit(" ", 2)
    assert shape == "(1, 3)"
    assert applied == str(loads == "False")  # applied if and only if the extension failed
    assert result.stdout.splitlines()[1] == "False"  # a second call never re-applies


def test_not_applied_when_torchvision_is_already_imported():
    result = _python(_load_shim_alone() + """
        import types
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        print(shim.ensure_torchvision_importable(), shim._library is None)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_not_applied_when_the_extension_loads():
    result = _python(_load_shim_alone() + """
        shim.extension_loads = lambda: True  # what a CUDA torch beside this torchvision reports
        print(shim.ensure_torchvision_importable(), shim._library is None)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
