"""The method contract: what every anomaly-detection method gives the harness.

A method is a name in the registry (``methods/__init__.py``), built from a plain config dict that
starts from one of its named presets (``paper``: faithful to the publication; ``cpu``: the same
graph family, small enough to train on a 2-core CPU in minutes). The harness only ever talks to
a method through this class (spec Part A, "General"):

- ``feature_spec()``: which frozen backbone features it consumes (the harness builds the
  backbone, computes and caches the features and passes them in);
- ``training_step(batch)`` (also ``forward(batch)``, so DDP wrappers work): a dict of losses
  with the total under ``"loss"`` and every component beside it;
- ``configure_optimizers()``: ``(optimizer, scheduler or None, "epoch" | "step")``;
- ``predict(batch)``: image scores, anomaly maps at ``eval_size`` and, for routed methods, a
  ``RoutingRecord``;
- ``on_epoch_start(epoch)``: optional hook for schedules that live inside the model (UniLEAD's
  Gumbel temperature anneal); the default does nothing.

Two declarations (class attributes) choose how the loop feeds a method; nothing else in the
harness branches on them:

- ``input_kind``: ``"features"`` (the default: cached frozen-backbone features, as above) or
  ``"images"`` (a trainable or augmented encoder: the loop's seeded image pipeline passes
  ``"images"``, (B, 3, S, S) float32 at ``image_spec().image_size`` normalised with its mean and
  std, training images first through ``augment(image, generator)`` with a generator seeded from
  (seed, epoch, sample index));
- ``fitted``: ``True`` for training-free methods (PatchCore): no epochs and no optimiser; the loop
  calls ``fit(batches)`` once over the whole training set, then evaluates as for any method.

Batches are dicts: ``"features"`` (list of float32 tensors (B, C_l, H_l, W_l), the raw backbone
levels in ``backbone_levels`` order) or ``"images"``, ``"label"`` (B,) long, ``"class_index"`` (B,) long,
``"index"`` (B,) long (each sample's position in its split, sorted by sample id: a per-sample seed
that any worker count agrees on). Image input may add ``"modalities"`` (see ``ImageSpec``), the
extra views ``augment`` returns (a dict: its keys become batch keys, ``"images"`` among them) and
``"components"`` / ``"component_count"`` (see ``ComponentSpec``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import Tensor, nn

from methods.config_schema import Bool, Choice, ConfigType, Int, ListOf, Nullable, Real, Rule, Str

# Config keys every method has, read by the harness (training loop, feature cache, evaluation).
SHARED_CONFIG_SCHEMA: dict[str, ConfigType] = {
    "backbone": Str(),  # a timm model name
    "backbone_levels": ListOf(Int(min=0)),
    "backbone_weights": Str(),  # auto, packaged, hub, random or a state-dict path
    "image_size": Int(min=1),
    "eval_size": Int(min=1),
    "epochs": Int(min=1),
    "batch_size": Int(min=1),
    "amp": Bool(),
    "grad_clip": Nullable(Real(min=0)),  # 0 or null: no clipping
    "seed": Int(min=0),
    # Precision of the cached frozen features (feature methods): float16 halves the disk and differs
    # from float32 by at most 2^-11 relative (harness/training/feature_cache.py); reads are float32.
    "feature_dtype": Choice("float32", "float16"),
}
SHARED_CONFIG_KEYS = tuple(SHARED_CONFIG_SCHEMA)


@dataclass(frozen=True)
class FeatureSpec:
    """The frozen backbone features a method consumes: timm name, out_indices, square input size, weights."""

    backbone: str
    levels: tuple[int, ...]
    image_size: int
    weights: str = "auto"


INPUT_KINDS = ("features", "images")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSpec:
    """How an image-input method wants its pixels: square resize to image_size, then (x - mean) / std.

    ``modalities``: the named inputs per sample, in order. ``"rgb"`` is the image above; ``"depth"``
    is the z channel of the sample's organised point cloud prepared as UniMMAD's official code does
    (harness.data.depth.depth_tensor; ``depth_foreground_mask`` False skips the foreground masking).
    With more than ``("rgb",)`` the batch carries ``"modalities"``: name -> (B, 3, S, S).
    """

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    modalities: tuple[str, ...] = ("rgb",)
    depth_foreground_mask: bool = True


@dataclass(frozen=True)
class ComponentSpec:
    """What the offline component-mask stage computes for a method (AnomalyMoE, spec 4.3 / decision 22).

    Masks come from k-means (``clusters`` per class) on frozen ``backbone`` features at ``level`` and
    ``image_size``, after greedy coreset sampling of ``coreset_fraction`` of each image's patches; at
    most ``clusters`` masks per image, each ``mask_size`` x ``mask_size`` bool. The batch carries
    ``"components"`` (B, clusters, mask_size, mask_size) bool, zero-padded, and ``"component_count"`` (B,).
    """

    backbone: str
    level: int
    image_size: int
    mask_size: int
    clusters: int = 5
    coreset_fraction: float = 0.01
    weights: str = "auto"
    seed: int = 0


@dataclass
class RoutingRecord:
    """Per-sample routing statistics of one predicted batch.

    gate_mean[b, l, e]: mean over sample b's tokens of expert e's gate weight in routed layer l.
    selection_freq[b, l, e]: fraction of those tokens for which expert e was selected (dense
    softmax routing: selected = the argmax expert; top-k routing: any of the k selected).
    entropy[b, l]: mean over tokens of the entropy (nats) of the router's softmax.
    """

    gate_mean: Tensor
    selection_freq: Tensor
    entropy: Tensor
    layer_names: list[str]
    expert_names: list[str]

    def __post_init__(self) -> None:
        b, l, e = self.gate_mean.shape
        if self.selection_freq.shape != (b, l, e) or self.entropy.shape != (b, l):
            raise ValueError(
                f"RoutingRecord shapes disagree: gate_mean {tuple(self.gate_mean.shape)}, "
                f"selection_freq {tuple(self.selection_freq.shape)}, entropy {tuple(self.entropy.shape)}; "
                "expected (B, L, E), (B, L, E) and (B, L)"
            )
        if len(self.layer_names) != l or len(self.expert_names) != e:
            raise ValueError(
                f"RoutingRecord names disagree with shapes: {len(self.layer_names)} layer names for L={l}, "
                f"{len(self.expert_names)} expert names for E={e}"
            )


@dataclass
class Prediction:
    """What ``predict`` returns: image_scores (B,), anomaly_maps (B, eval_size, eval_size) float32.

    ``routing``: one RoutingRecord, or a list of them when layers route over different expert sets.
    A method that normalises maps over a class's whole test set (``class_normalised``) returns
    ``levels`` (name -> (B, h, w) raw maps) and ``level_weights`` (B, L) with image_scores and
    anomaly_maps None; the loop gathers every class's per-level minima and maxima from all workers
    and calls ``finish(prediction, minima, maxima)`` for the scores and maps.
    """

    image_scores: Tensor | None
    anomaly_maps: Tensor | None
    routing: RoutingRecord | list[RoutingRecord] | None = None
    levels: dict[str, Tensor] | None = None
    level_weights: Tensor | None = None


class AnomalyMethod(nn.Module):
    """Base class of every method; subclasses set ``name``, ``version`` and ``presets``.

    ``__init__(config, feature_channels, feature_reductions)``: ``config`` is the resolved dict
    (a preset with overrides merged, see ``methods.preset_config``); the channels and strides are
    the backbone's (``backbone.channels`` / ``backbone.reductions``) for ``backbone_levels``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    config_schema: ClassVar[dict[str, ConfigType]] = SHARED_CONFIG_SCHEMA  # key -> type; see methods/config_schema.py
    config_rules: ClassVar[tuple[Rule, ...]] = ()  # constraints across keys
    input_kind: ClassVar[str] = "features"  # one of INPUT_KINDS: what the loop's input stage feeds it
    fitted: ClassVar[bool] = False  # True: fit(batches) once instead of epochs of training_step
    class_normalised: ClassVar[bool] = False  # True: predict gives raw levels, finish() normalises per class

    def __init__(self, config: dict[str, Any], feature_channels: Sequence[int], feature_reductions: Sequence[int]):
        super().__init__()
        if len(feature_channels) != len(feature_reductions):
            raise ValueError(
                f"{self.name}: {len(feature_channels)} feature channel counts but {len(feature_reductions)} "
                "reductions; pass backbone.channels and backbone.reductions for the same levels"
            )
        self.config = dict(config)
        self.feature_channels = [int(c) for c in feature_channels]
        self.feature_reductions = [int(r) for r in feature_reductions]

    # --- what the harness calls -------------------------------------------------------------
    def feature_spec(self) -> FeatureSpec | None:
        c = self.config
        return FeatureSpec(c["backbone"], tuple(int(i) for i in c["backbone_levels"]), int(c["image_size"]), c.get("backbone_weights", "auto"))

    def image_spec(self) -> ImageSpec:
        """For ``input_kind == "images"``: the image size of the config, ImageNet normalisation."""
        return ImageSpec(int(self.config["image_size"]))

    def augment(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """For ``input_kind == "images"``: one training image (3, S, S), augmented with ``generator``
        only (seeded per (seed, epoch, sample), so any worker count sees the same images); default: none.
        May return a dict of named views (e.g. ``{"images": clean, "images_jittered": ...}``): each
        becomes a batch key. Evaluation images are never augmented."""
        return image

    def set_class_names(self, names: Sequence[str]) -> None:
        """Called by the loop before any work with the dataset's class names in ``class_index`` order
        (UniMMAD weighs its loss by class); default: nothing."""

    @classmethod
    def component_spec_for(cls, config: dict[str, Any]) -> ComponentSpec | None:
        """For methods that read component masks (AnomalyMoE): what the offline stage computes for a
        resolved config, without building the model; None: no masks."""
        return None

    def component_spec(self) -> ComponentSpec | None:
        return self.component_spec_for(self.config)

    def level_alignment(self) -> tuple[str, Callable[[list[Tensor]], list[Tensor]]] | None:
        """For feature methods whose first step on the backbone levels is exact and per image (the
        UniAD family's neck): (name, fn) the feature cache applies once at extraction, so it stores
        only what the method reads; fn maps a batch's levels to levels. None: store the raw levels."""
        return None

    def finish(self, prediction: Prediction, minima: dict[str, Tensor], maxima: dict[str, Tensor]) -> Prediction:
        """For ``class_normalised`` methods: scores and maps from raw ``levels``, given each sample's class
        minimum and maximum per level (name -> (B,)) over the class's whole test set."""
        raise NotImplementedError(f"{self.name} declares class_normalised = True but does not implement finish()")

    def parameters_reported_apart(self) -> dict[str, nn.Module]:
        """Modules whose parameters are counted apart from ``trainable`` (a frozen prior generator, an
        auxiliary estimator); profiles list them by name. Default: none."""
        return {}

    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        """A random batch shaped as the loop gives this method (profiling counts MACs on it)."""
        raise NotImplementedError(f"{self.name} does not say what its batches look like (example_batch)")

    def fit(self, batches: Iterable[dict[str, Any]]) -> None:
        """For ``fitted`` methods: build the model's state in one pass over the training batches."""
        raise NotImplementedError(f"{self.name} declares fitted = True but does not implement fit(batches)")

    def memory_bank_size(self, train_images: dict[str, int]) -> dict[str, int] | None:
        """For methods whose size is a memory bank rather than parameters: vectors, dims and bytes for
        a dataset with ``train_images`` (class -> training images) at the configured size; None: no bank."""
        return None

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Same as ``training_step`` so that DistributedDataParallel(model)(batch) trains."""
        return self.training_step(batch)

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any, str]:
        """AdamW + StepLR per epoch from the config keys lr, weight_decay, lr_step_epochs, lr_gamma."""
        c = self.config
        optimizer = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad],
            lr=float(c["lr"]),
            weight_decay=float(c["weight_decay"]),
            betas=(0.9, 0.999),
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(c["lr_step_epochs"]), gamma=float(c["lr_gamma"]))
        return optimizer, scheduler, "epoch"

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> Prediction:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the training loop before each epoch (0-based); default: nothing."""

    def reconstruction_module(self) -> nn.Module:
        """The module whose parameters the papers call the reconstruction (decoder) module."""
        return self


# --- routing statistics --------------------------------------------------------------------

def routing_statistics(gates: Tensor, probs: Tensor, selected: Tensor, tokens_per_sample: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample statistics of one routed layer call.

    gates (N, E): the weight each expert's output was given (zeros for unselected ones);
    probs (N, E): the router's softmax; selected (N, E) bool; N = B * tokens_per_sample.
    Returns gate_mean (B, E), selection_freq (B, E), entropy (B,).
    """
    e = gates.shape[-1]
    gates = gates.reshape(-1, tokens_per_sample, e).float()
    probs = probs.reshape(-1, tokens_per_sample, e).float()
    selected = selected.reshape(-1, tokens_per_sample, e).float()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return gates.mean(1), selected.mean(1), entropy.mean(1)


def stack_routing(layers: list[tuple[str, Tensor, Tensor, Tensor]], expert_names: list[str]) -> RoutingRecord:
    """One RoutingRecord from per-layer (name, gate_mean (B,E), selection_freq (B,E), entropy (B,))."""
    return RoutingRecord(
        gate_mean=torch.stack([g for _, g, _, _ in layers], 1).cpu(),
        selection_freq=torch.stack([s for _, _, s, _ in layers], 1).cpu(),
        entropy=torch.stack([h for _, _, _, h in layers], 1).cpu(),
        layer_names=[name for name, _, _, _ in layers],
        expert_names=list(expert_names),
    )


def summarise_routing(records: Sequence[RoutingRecord], class_names: Sequence[Sequence[str]] | Sequence[str]) -> list[dict]:
    """Per-class rows (class, layer, expert, gate_mean, selection_freq, entropy, samples).

    ``class_names[i]`` lists the class of each sample of ``records[i]`` (a flat list is accepted
    for a single record). Means are over samples, so every sample weighs the same.
    """
    if records and isinstance(class_names[0], str):
        class_names = [class_names]  # type: ignore[list-item]
    if len(records) != len(class_names):
        raise ValueError(f"{len(records)} routing records but {len(class_names)} class-name lists; pass one list per record")
    sums: dict[tuple[str, str, str], list[float]] = {}
    entropy_sums: dict[tuple[str, str], list[float]] = {}
    for record, names in zip(records, class_names):
        if len(names) != record.gate_mean.shape[0]:
            raise ValueError(f"routing record has {record.gate_mean.shape[0]} samples but {len(names)} class names")
        for b, cls in enumerate(names):
            for li, layer in enumerate(record.layer_names):
                h = entropy_sums.setdefault((cls, layer), [0.0, 0])
                h[0] += float(record.entropy[b, li])
                h[1] += 1
                for ei, expert in enumerate(record.expert_names):
                    s = sums.setdefault((cls, layer, expert), [0.0, 0.0, 0])
                    s[0] += float(record.gate_mean[b, li, ei])
                    s[1] += float(record.selection_freq[b, li, ei])
                    s[2] += 1
    rows = []
    for (cls, layer, expert), (gate, freq, n) in sorted(sums.items()):
        h_sum, h_n = entropy_sums[(cls, layer)]
        rows.append(
            {
                "class": cls,
                "layer": layer,
                "expert": expert,
                "gate_mean": gate / n,
                "selection_freq": freq / n,
                "entropy": h_sum / h_n,
                "samples": int(n),
            }
        )
    return rows


def summarise_routing_records(pairs: Sequence[tuple[RoutingRecord, Sequence[str]]]) -> list[dict]:
    """``summarise_routing`` for a list of (record, class names of its samples) pairs."""
    return summarise_routing([r for r, _ in pairs], [list(n) for _, n in pairs])


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation var/mean^2 (the MoE balance loss); 0 for a single expert."""
    if values.numel() <= 1:
        return values.new_zeros(())
    values = values.float()
    return values.var() / (values.mean() ** 2 + 1e-10)


@contextmanager
def evaluation_mode(module: nn.Module):
    """``module`` in eval mode for the block, then back in the mode it was in (predict may run mid-training)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def topk_fraction_mean(maps: Tensor, fraction: float, rounding: str = "ceil") -> Tensor:
    """Mean of each map's top ceil (or, with rounding "floor", int) of fraction * pixels values, at
    least one; maps (B, H, W) -> (B,). Dinomaly's max_ratio rounds down (655 pixels at 256^2)."""
    flat = maps.flatten(1)
    count = fraction * flat.shape[1]
    k = max(1, int(math.ceil(count)) if rounding == "ceil" else int(count))
    return flat.topk(k, dim=1).values.mean(1)


def check_features(method: AnomalyMethod, features: Sequence[Tensor]) -> None:
    """Clear error when a batch's feature levels do not match what the method was built for."""
    channels = [int(f.shape[1]) for f in features]
    if channels != method.feature_channels:
        raise ValueError(
            f"{method.name}: batch features have channels {channels}, the model was built for "
            f"{method.feature_channels} (config backbone={method.config.get('backbone')!r}, "
            f"levels={method.config.get('backbone_levels')}); rebuild the method for this backbone"
        )

