"""Parameter and FLOP profiles of a method (spec Part A "General"; sections 1.4, 1.6, 2.2 and 5).

Parameters, three counts: trainable; trainable + the frozen backbone; the reconstruction module
alone (what MoEAD and UniLEAD quote). Also a "thop-style" count that, like thop, skips attention
modules and embedding tables, which is how UniLEAD's 1.42M can be reproduced (spec 2.2).

FLOPs, two conventions, each as MACs and 2 x MACs, with and without the backbone, at the
preset's image size (batch 1):
- true: every multiply-accumulate of the matrix products (torch's FlopCounterMode over aten
  mm/bmm/addmm/convolution ...), including the masked attention's QK^T;
- common counter: what fvcore and calflops report, i.e. the same without the QK^T product of
  neighbour-masked attention (with a float mask PyTorch computes it with baddbmm, which they do
  not count). We measure that product with hooks on NeighbourMaskedAttention and subtract it.
  Attention is counted in its "baddbmm" formulation whatever ``attention_impl`` says: the
  products are the same, and FlopCounterMode cannot see into CPU scaled_dot_product_attention.
Element-wise work (softmax, norms, activations) is counted by neither convention here; calflops
adds a little of it (UniAD 3.179 vs 3.168 G).
Everything is built with a randomly initialised backbone, so no weight file is needed.

A method sized by a memory bank rather than by parameters (PatchCore) reports ``memory_bank``
instead: vectors x dims and bytes for MVTec AD's training set (the bundled card's counts) at the
preset's size, before and after the coreset, per-class total and unified (spec 10.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import methods
from methods.blocks.attention import NeighbourMaskedAttention

TABLE4_BOTTLENECKS = (
    (16,), (32,), (64,), (128,), (16, 32), (32, 64), (64, 128), (16, 32, 64), (32, 64, 128), (16, 32, 64, 128),
)
_THOP_COUNTED = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)


@dataclass
class MacCount:
    """Multiply-accumulates of one forward: ``true`` includes the masked QK^T, ``common`` does not;
    ``inside``: the share spent inside the module ``count_macs`` was asked about (0 when none)."""

    true: int
    masked_qk: int
    inside: int = 0

    @property
    def common(self) -> int:
        return self.true - self.masked_qk

    def as_json(self) -> dict[str, int]:
        return {"true": self.true, "masked_qk": self.masked_qk, "common": self.common}


def count_macs(fn, *args, inside: nn.Module | None = None, **kwargs) -> MacCount:
    """MACs of ``fn(*args, **kwargs)`` under no_grad: true count, the masked-attention QK^T part, and
    the share inside ``inside`` (any of its modules; the outermost call of nested ones counted once)."""
    masked = [0]
    counter = FlopCounterMode(display=False)
    depth, spent, start = [0], [0], [0]

    def on_attention(module, inputs, output):
        query, key = inputs[0], inputs[1]
        mask = inputs[3] if len(inputs) > 3 else None
        if mask is not None:
            masked[0] += query.shape[0] * query.shape[1] * key.shape[1] * query.shape[2]

    def enter(module, inputs):
        if depth[0] == 0:
            start[0] = counter.get_total_flops()
        depth[0] += 1

    def leave(module, inputs, output):
        depth[0] -= 1
        if depth[0] == 0:
            spent[0] += counter.get_total_flops() - start[0]

    attentions = [m for m in _modules_of(fn) if isinstance(m, NeighbourMaskedAttention)]
    hooks = [m.register_forward_hook(on_attention) for m in attentions]
    part = list(inside.modules()) if inside is not None else []
    hooks += [m.register_forward_pre_hook(enter) for m in part] + [m.register_forward_hook(leave) for m in part]
    impls = [m.impl for m in attentions]
    try:
        for m in attentions:
            m.impl = "baddbmm"
        with torch.no_grad(), counter:
            fn(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
        for m, impl in zip(attentions, impls):
            m.impl = impl
    return MacCount(true=int(counter.get_total_flops()) // 2, masked_qk=masked[0], inside=int(spent[0]) // 2)


def _modules_of(fn) -> list[nn.Module]:
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    return list(owner.modules()) if isinstance(owner, nn.Module) else []


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def thop_style_parameter_count(module: nn.Module) -> int:
    """Parameters as thop counts them: only Linear/Conv/Norm leaves, never inside attention modules, no embeddings."""
    inside_attention = {id(m) for a in module.modules() if isinstance(a, NeighbourMaskedAttention) for m in a.modules()}
    return sum(
        p.numel()
        for m in module.modules()
        if type(m) in _THOP_COUNTED and id(m) not in inside_attention
        for p in m.parameters(recurse=False)
    )


def random_features(method: methods.AnomalyMethod, batch: int = 1) -> list[torch.Tensor]:
    """Random backbone-shaped features for ``method`` at its configured image size."""
    size = int(method.config["image_size"])
    return [
        torch.randn(batch, c, -(-size // r), -(-size // r)) for c, r in zip(method.feature_channels, method.feature_reductions)
    ]


def profile_method(
    name: str,
    preset: str = "paper",
    overrides: dict[str, Any] | None = None,
    *,
    with_backbone: bool = True,
    with_macs: bool = True,
) -> dict[str, Any]:
    """A JSON-ready profile of ``name``/``preset``: parameter counts and MACs (see module docstring)."""
    from harness.backbones import create_backbone

    if methods.get(name).input_kind == "images":
        return profile_image_method(name, preset, overrides, with_macs=with_macs)
    config = methods.preset_config(name, preset, overrides)
    backbone = create_backbone(config["backbone"], config["backbone_levels"], weights="random") if with_backbone else None
    if backbone is not None:
        channels, reductions = list(backbone.channels), list(backbone.reductions)
    else:
        channels, reductions = _feature_shape(config)
    method = methods.build(name, preset, overrides, feature_channels=channels, feature_reductions=reductions).eval()
    recon = method.reconstruction_module()
    image_size = int(config["image_size"])
    bank = method.memory_bank_size(mvtec_ad_train_images())
    macs = count_macs(method.reconstruct, random_features(method)) if bank is None and with_macs else MacCount(0, 0)
    profile: dict[str, Any] = {
        "method": name,
        "preset": preset,
        "overrides": dict(overrides or {}),
        "image_size": image_size,
        "token_grid": list(method.grid) if hasattr(method, "grid") else None,
        "backbone": config["backbone"],
        "params": {
            "trainable": parameter_count(method, trainable_only=True),
            "reconstruction": parameter_count(recon),
            "reconstruction_thop_style": thop_style_parameter_count(recon),
            "backbone": parameter_count(backbone) if backbone is not None else None,
            "with_backbone": None,
        },
        "macs": {"reconstruction": macs.as_json()},
    }
    if bank is not None:
        profile["memory_bank"] = {"dataset": "mvtec_ad", **bank}
    if backbone is not None:
        profile["params"]["with_backbone"] = profile["params"]["trainable"] + profile["params"]["backbone"]
        backbone_macs = count_macs(backbone, torch.randn(1, 3, image_size, image_size))
        profile["macs"]["backbone"] = backbone_macs.as_json()
        profile["macs"]["with_backbone"] = {
            key: profile["macs"]["reconstruction"][key] + profile["macs"]["backbone"][key] for key in ("true", "masked_qk", "common")
        }
    profile["reported"] = _reported(name, config)
    return profile


def profile_image_method(name: str, preset: str = "paper", overrides: dict[str, Any] | None = None, *, with_macs: bool = True) -> dict[str, Any]:
    """The profile of a method that owns its encoders (input_kind "images"), built with random weights.

    ``trainable`` leaves out the modules the method reports apart (a frozen prior generator, an
    auxiliary estimator, a frozen encoder), listed under ``apart`` by name; MACs are one ``predict``
    on the method's ``example_batch`` (every module it runs, frozen ones included), and the share of
    them inside ``reconstruction_module()``."""
    overrides = {**(overrides or {}), "backbone_weights": "random"}
    config = methods.preset_config(name, preset, overrides)
    method = methods.build(name, preset, overrides, feature_channels=[], feature_reductions=[]).eval()
    apart = method.parameters_reported_apart()
    apart_ids = {id(p) for module in apart.values() for p in module.parameters()}
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad and id(p) not in apart_ids)
    recon = method.reconstruction_module()
    profile: dict[str, Any] = {
        "method": name,
        "preset": preset,
        "overrides": {k: v for k, v in overrides.items() if k != "backbone_weights"},
        "image_size": int(config["image_size"]),
        "token_grid": None,
        "backbone": config["backbone"],
        "params": {
            "trainable": trainable,
            "reconstruction": parameter_count(recon),
            "reconstruction_thop_style": thop_style_parameter_count(recon),
            "backbone": None,
            "with_backbone": trainable + sum(parameter_count(m) for m in apart.values()),
            "apart": {label: parameter_count(module) for label, module in apart.items()},
        },
        "macs": {},
    }
    if with_macs:
        count = count_macs(method.predict, method.example_batch(1), inside=recon)
        profile["macs"]["with_backbone"] = count.as_json()
        profile["macs"]["reconstruction"] = {"true": count.inside, "masked_qk": 0, "common": count.inside}
    profile["reported"] = _reported(name, config)
    return profile


def mvtec_ad_train_images() -> dict[str, int]:
    """Training images per class of MVTec AD, from the bundled dataset card (3,629 in all)."""
    from harness.data.registry import get_card

    card = get_card("mvtec_ad")
    return {name: cls.split_total("train") for name, cls in card.classes.items()}


def _feature_shape(config: dict) -> tuple[list[int], list[int]]:
    """Channels/strides of the configured backbone levels from timm's metadata, without building weights."""
    import timm

    model = timm.create_model(config["backbone"], features_only=True, out_indices=tuple(config["backbone_levels"]), pretrained=False)
    return list(model.feature_info.channels()), list(model.feature_info.reduction())


def _reported(name: str, config: dict) -> dict[str, dict[str, Any]]:
    """Paper-reported sizes for this configuration (harness/reference/reported), labelled with their source."""
    from harness.reported import reported_for

    return {
        metric: {"value": value.value, "source": value.source, "paper": value.paper}
        for metric, value in reported_for(name, "any", config).items()
        if metric in ("params_m", "flops_g")
    }


def table4_rows(rows: Sequence[Sequence[int]] = TABLE4_BOTTLENECKS, preset: str = "paper") -> list[dict[str, Any]]:
    """UniLEAD Table 4 as we count it: one profile (reconstruction module, no backbone) per bottleneck set."""
    out = []
    for widths in rows:
        profile = profile_method("unilead", preset, {"bottlenecks": list(widths)}, with_backbone=False)
        out.append(
            {
                "bottlenecks": list(widths),
                "params_true": profile["params"]["reconstruction"],
                "params_thop_style": profile["params"]["reconstruction_thop_style"],
                "gflops_common": 2 * profile["macs"]["reconstruction"]["common"] / 1e9,
                "gflops_true": 2 * profile["macs"]["reconstruction"]["true"] / 1e9,
                "reported": profile["reported"],
            }
        )
    return out
