"""Data layer: dataset cards, loaders for the official layouts, the embedded default dataset."""

from harness.data.sample import ANOMALOUS, NORMAL, Sample

__all__ = ["ANOMALOUS", "NORMAL", "Sample"]
