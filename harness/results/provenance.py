"""Provenance of a run: git revision, package versions, hardware (datasets-and-metrics.md section 7.10)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "anomaly-harness",
    "torch",
    "torchvision",
    "timm",
    "ray",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "pillow",
)


def git_revision(directory: str | Path | None = None) -> str | None:
    """The commit the harness code comes from, with ``-dirty`` when it has local changes; None outside git."""
    where = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide what a run computes, plus Python's."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict:
    """CPU count, memory and GPU names of the machine that ran the trial."""
    info: dict = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return info
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


VECTOR_FLAGS = (  # the /proc/cpuinfo flags that decide which CPU kernels run
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve", "sve2",
)


def driver_command() -> str:
    """The command line of this process, as a shell would take it back."""
    return shlex.join(sys.argv)


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        entries[key.strip().lower()] = value.strip()
    return entries


def compute_environment() -> dict:
    """CPU, GPU, library and thread settings of this process: the runs table's columns of those names."""
    import torch

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    cuda = torch.cuda.is_available()
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": " ".join(flag for flag in VECTOR_FLAGS if flag in flags),
        "gpu_model": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
    }
