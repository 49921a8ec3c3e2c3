"""harness: a benchmark harness for multi-class unsupervised visual anomaly detection."""

from harness.torchvision_shim import ensure_torchvision_importable

__version__ = "0.1.0"

ensure_torchvision_importable()
