"""Data layer: dataset cards, loaders for the official layouts, the embedded default dataset."""

from harness.data.cards import CardError, ClassCard, DatasetCard, load_card
from harness.data.images import mask_channel_values, read_mask, read_mask_stack, read_rgb, read_xyz
from harness.data.registry import DatasetError, DatasetIndex, get_card, list_cards, load_dataset
from harness.data.sample import ANOMALOUS, NORMAL, Sample

__all__ = [
    "ANOMALOUS", "NORMAL", "Sample",
    "CardError", "ClassCard", "DatasetCard", "load_card",
    "DatasetError", "DatasetIndex", "get_card", "list_cards", "load_dataset",
    "mask_channel_values", "read_mask", "read_mask_stack", "read_rgb", "read_xyz",
]
