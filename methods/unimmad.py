"""UniMMAD (Zhao et al.), multi-modal multi-class detection with the cross mixture of experts, as the
official code does it (spec Part A "UniMMAD", section 3; yuanzhao-CVLAB/UniMMAD @ cb269af).

Inputs: each sample's modality images (``modalities`` in config order, 3 channels each: rgb ImageNet-
normalised, depth as harness.data.depth prepares it) and their stack, zero-padded to 12 channels.
General path (trainable): ``ModalityStem`` (official ``Input_Preprocess``: a learned 12xSxS embedding,
init 0.02 N(0,1), added to the stack; conv3 12->24 BN ReLU, conv3 24->48 BN ReLU, conv3 48->3, plus a
1x1 12->3 shortcut) -> the general encoder, a fine-tuned copy of the backbone with all its stages built
(timm builds WRN-50-2's layer4, unused but counted), levels 1-3 with a ReLU -> FCM
(methods.blocks.fcm) -> features L2-normalised over channels.
Prior generator (frozen, reported apart): a separate copy of the same backbone and weights, eval mode,
no gradient, on each modality image alone; levels 1-3, ReLU, L2-normalised: the priors u.
One ``CrossMoE`` per scale (methods.blocks.cmoe) maps each (sample, modality) pair -- the sample's
general feature and that modality's prior -- to a reconstruction p of u; pairs are packed
modality-major into one batch, so every router sees the image's own prior.
Loss: 3 x the mean over (scale, pair) of the spatial mean of d * d.detach()^2 (d = 1 - cos(u, p) per
pixel), each pair weighted by its sample's loss weight (``loss_weight_per_sample``; false: the official
code's batch-mean weight), plus max(1 - epoch / epochs, 0.001) x the mean over scales of the balance
losses summed over branches. Adam lr 1e-3, cosine annealing with T_max = epochs, stepped per epoch.
Map: per (scale, modality) 1 - cos(u, p), bilinear (align_corners=True) to eval_size, sqrt of the sum of
squares over scales and modalities, 15x15 Gaussian sigma 4 with zero padding (the official eval.py's
conv2d); image score: the mean of the top floor(HW / 1000) pixels.
Paper preset trainable parameters: 194,811,660 (encoder 66,834,240, FCM 56,760,308, stem 800,946,
C-MoE 23,034,466 / 23,362,658 / 24,019,042); the prior generator's 66,834,240 are reported apart.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ConfigError
from methods import register
from methods.base import (
    SHARED_CONFIG_SCHEMA,
    AnomalyMethod,
    ImageSpec,
    Prediction,
    RoutingRecord,
    evaluation_mode,
    stack_routing,
    topk_fraction_mean,
)
from methods.blocks.cmoe import FILTERING_MODES, BranchRouting, CrossMoE
from methods.blocks.fcm import MultiScaleFusion
from methods.blocks.scoring import SMOOTHING_BOUNDARIES, gaussian_smooth
from methods.config_schema import Bool, Choice, ConfigType, Int, ListOf, Real, Rule, Str

MODALITIES = ("rgb", "depth")
LEVEL_COUNT = 3

_PAPER = {
    "backbone": "wide_resnet50_2.tv2_in1k",
    "backbone_levels": [1, 2, 3],
    "backbone_weights": "auto",
    "image_size": 256,
    "eval_size": 256,
    "epochs": 200,
    "batch_size": 10,
    "amp": True,  # bf16 autocast on CUDA (the official accelerate "bf16")
    "grad_clip": None,
    "seed": 42,
    "modalities": ["rgb", "depth"],
    "depth_foreground_mask": True,
    "encoder_all_stages": True,  # the last stage is built (and counted) but unused, as timm's features_only default
    "input_channels": 12,  # up to 4 stacked 3-channel modalities
    "embedding_init_std": 0.02,
    "fcm_width": 512,
    "fcm_embedding_channels": 2048,
    "decoder_channels": [256, 512, 1024],
    "decoder_widths": [512, 256, 128],
    "decoder_blocks": [3, 4, 6],
    "moe_width": 256,
    "kernel_sizes": [1, 3, 5],
    "base_experts": 8,
    "leaders": 32,
    "top_k": 2,
    "router_temperature": 1.0,
    "z_loss_weight": 1e-4,
    "base_init_std": 0.05,
    "leader_init_std": 0.02,
    "dynamic_filtering": "grouped",
    "focal_gamma": 2.0,
    "decompression_scale": 3.0,
    "loss_weight_per_sample": True,
    "loss_weights": {},  # class name -> weight; classes not named weigh 1
    "balance_floor": 0.001,
    "lr": 1e-3,
    "smoothing_sigma": 4.0,
    "smoothing_kernel": 15,
    "smoothing_boundary": "zeros",
    "score_top_fraction": 0.001,
}

_CPU = {
    **_PAPER,
    "backbone": "tf_efficientnet_lite0",  # packaged weights; levels 1-3 are 24/40/112 at strides 4/8/16
    "image_size": 128,
    "eval_size": 128,
    "epochs": 15,
    "batch_size": 8,
    "amp": False,
    "seed": 0,
    "fcm_width": 48,
    "fcm_embedding_channels": 224,  # the paper's 2 x level-3 channels
    "decoder_channels": [24, 40, 112],
    "decoder_widths": [56, 20, 12],  # RD4AD's cpu ratios: half each stage's output
    "moe_width": 64,
    "smoothing_sigma": 2.0,  # 4 px at 256 scaled to 128 px
    "smoothing_kernel": 7,
}


class WeightsByName(ConfigType):
    """A mapping of non-empty names to finite numbers >= 0 (``{}`` for none)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) and all(Str().accepts(k) and Real(min=0).accepts(v) for k, v in value.items())

    def describe(self) -> str:
        return "a mapping of class names to numbers >= 0, e.g. {bagel: 2.0}"


def _unique(key: str):
    return lambda c: len(set(c[key])) == len(c[key])


@register("unimmad")
class UniMMAD(AnomalyMethod):
    """General encoder + FCM, frozen prior generator, one cross MoE per scale reconstructing each modality's prior."""

    version = 1
    input_kind = "images"
    presets = {"paper": _PAPER, "cpu": _CPU}
    config_schema = {
        **SHARED_CONFIG_SCHEMA,
        "modalities": ListOf(Choice(*MODALITIES)),
        "depth_foreground_mask": Bool(),
        "encoder_all_stages": Bool(),
        "input_channels": Int(min=3),
        "embedding_init_std": Real(min=0),
        "fcm_width": Int(min=3),
        "fcm_embedding_channels": Int(min=1),
        "decoder_channels": ListOf(Int(min=1), length=3),
        "decoder_widths": ListOf(Int(min=1), length=3),
        "decoder_blocks": ListOf(Int(min=1), length=3),
        "moe_width": Int(min=1),
        "kernel_sizes": ListOf(Int(min=1), length=3),
        "base_experts": Int(min=1),
        "leaders": Int(min=1),
        "top_k": Int(min=1),
        "router_temperature": Real(positive=True),
        "z_loss_weight": Real(min=0),
        "base_init_std": Real(positive=True),
        "leader_init_std": Real(min=0),
        "dynamic_filtering": Choice(*FILTERING_MODES),
        "focal_gamma": Real(min=0),
        "decompression_scale": Real(positive=True),
        "loss_weight_per_sample": Bool(),
        "loss_weights": WeightsByName(),
        "balance_floor": Real(min=0),
        "lr": Real(min=0.0),  # 0 freezes the weights: how sharding tests compare worker counts
        "smoothing_sigma": Real(min=0),
        "smoothing_kernel": Int(min=1),
        "smoothing_boundary": Choice(*SMOOTHING_BOUNDARIES),
        "score_top_fraction": Real(positive=True, max=1),
    }
    config_rules = (
        Rule("modalities", _unique("modalities"), "each modality at most once"),
        Rule("modalities", lambda c: 3 * len(c["modalities"]) <= c["input_channels"], "at most input_channels / 3 modalities (3 channels each)"),
        Rule("backbone_levels", lambda c: len(c["backbone_levels"]) == LEVEL_COUNT, "three levels (FCM fuses strides 4, 8 and 16)"),
        Rule("top_k", lambda c: c["top_k"] <= c["leaders"], "at most the number of leaders"),
        Rule("kernel_sizes", lambda c: all(k % 2 == 1 for k in c["kernel_sizes"]), "odd kernel sizes (the expert convolutions keep the map size)"),
        Rule("image_size", lambda c: c["image_size"] % 32 == 0, "a multiple of 32 (FCM embeds at 1/32 and decodes back)"),
        Rule("smoothing_kernel", lambda c: c["smoothing_kernel"] % 2 == 1, "an odd integer (the Gaussian kernel is centred)"),
    )

    def __init__(self, config: dict[str, Any], feature_channels: Sequence[int], feature_reductions: Sequence[int]):
        super().__init__(config, feature_channels, feature_reductions)
        from harness.backbones import create_backbone

        c = self.config
        self.modalities = tuple(c["modalities"])
        self.epoch = 0
        self._class_weights: Tensor | None = None
        levels = [int(i) for i in c["backbone_levels"]]
        built = levels + [4] if c["encoder_all_stages"] and max(levels) < 4 else levels
        self.prior_generator = create_backbone(c["backbone"], built, weights=c["backbone_weights"])
        channels, reductions = self.prior_generator.channels[:LEVEL_COUNT], self.prior_generator.reductions[:LEVEL_COUNT]
        _check_strides(reductions)
        self.encoder = copy.deepcopy(self.prior_generator.model).requires_grad_(True)
        self.stem = ModalityStem(int(c["input_channels"]), int(c["image_size"]), float(c["embedding_init_std"]))
        self.fcm = MultiScaleFusion(channels, int(c["fcm_width"]), int(c["fcm_embedding_channels"]), c["decoder_channels"], c["decoder_widths"], c["decoder_blocks"])
        self.c_moes = nn.ModuleList(
            CrossMoE(ch, int(c["moe_width"]), int(c["base_experts"]), int(c["leaders"]), int(c["top_k"]), c["kernel_sizes"],
                     float(c["base_init_std"]), float(c["leader_init_std"]), float(c["router_temperature"]), float(c["z_loss_weight"]))
            for ch in channels
        )
        self.set_filtering(c["dynamic_filtering"])

    # --- contract ------------------------------------------------------------------------------
    def image_spec(self) -> ImageSpec:
        c = self.config
        return ImageSpec(int(c["image_size"]), modalities=self.modalities, depth_foreground_mask=bool(c["depth_foreground_mask"]))

    def parameters_reported_apart(self) -> dict[str, nn.Module]:
        return {"prior_generator": self.prior_generator}

    def reconstruction_module(self) -> nn.Module:
        return self.c_moes

    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        size = int(self.config["image_size"])
        images = {name: torch.randn(batch_size, 3, size, size) for name in self.modalities}
        batch = {
            "images": images.get("rgb", next(iter(images.values()))),
            "label": torch.zeros(batch_size, dtype=torch.long),
            "class_index": torch.zeros(batch_size, dtype=torch.long),
            "index": torch.arange(batch_size),
        }
        if self.modalities != ("rgb",):
            batch["modalities"] = images
        return batch

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_filtering(self, mode: str) -> None:
        """``grouped`` (one grouped convolution per branch) or ``per_sample`` (the reference)."""
        for moe in self.c_moes:
            moe.set_filtering(mode)

    def set_class_names(self, names: Sequence[str]) -> None:
        """The class of each ``class_index`` (the loop's order), so ``loss_weights`` can weigh samples by class."""
        weights = dict(self.config["loss_weights"])
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(f"unimmad: method_config.loss_weights names class(es) {unknown} that the dataset lacks; its classes: {', '.join(names)}")
        self._class_weights = torch.tensor([float(weights.get(name, 1.0)) for name in names])

    def configure_optimizers(self):
        """Adam (default betas) over every trainable part, cosine annealing over the epochs, stepped per epoch."""
        c = self.config
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=float(c["lr"]))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(c["epochs"]))
        return optimizer, scheduler, "epoch"

    # --- data flow -------------------------------------------------------------------------------
    def modality_images(self, batch: dict[str, Any]) -> list[Tensor]:
        """The batch's (B, 3, S, S) image per configured modality, in config order."""
        if self.modalities == ("rgb",):
            return [batch["images"]]
        given = batch.get("modalities") or {}
        missing = [name for name in self.modalities if name not in given]
        if missing:
            raise ValueError(
                f"unimmad: method_config.modalities is {list(self.modalities)} but the batch has no {missing} image(s) "
                f"(batch modalities: {sorted(given)}); train on a dataset with those modalities or set modalities to [rgb]"
            )
        return [given[name] for name in self.modalities]

    def general_features(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Stacked modalities -> stem -> trainable encoder levels 1-3 (ReLU) -> FCM -> L2-normalised (B, C_l, h_l, w_l)."""
        stacked = torch.cat(list(images), dim=1)
        stacked = F.pad(stacked, (0, 0, 0, 0, 0, self.stem.channels - stacked.shape[1]))
        levels = [F.relu(x) for x in leading_levels(self.encoder, self.stem(stacked), LEVEL_COUNT)]
        return [F.normalize(x, p=2, dim=1) for x in self.fcm(levels)]

    def priors(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Every modality image through the frozen prior generator: (M*B, C_l, h_l, w_l), modality-major."""
        with torch.no_grad():
            levels = leading_levels(self.prior_generator.model, torch.cat(list(images), dim=0), LEVEL_COUNT)
            return [F.normalize(F.relu(x), p=2, dim=1) for x in levels]

    def reconstruct(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], Tensor, list[list[BranchRouting]]]:
        """(priors, reconstructions) per scale over the pairs, the mean over scales of the balance losses, the routing."""
        images = self.modality_images(batch)
        general = self.general_features(images)
        priors = self.priors(images)
        reconstructions, balances, routing = [], [], []
        for moe, g, u in zip(self.c_moes, general, priors):
            p, balance, scale_routing = moe(g.repeat(len(images), 1, 1, 1), u)
            reconstructions.append(p)
            balances.append(balance)
            routing.append(scale_routing)
        return priors, reconstructions, torch.stack(balances).mean(), routing

    # --- training --------------------------------------------------------------------------------
    def balance_factor(self) -> float:
        """The anneal max(1 - epoch / epochs, floor), epoch 0-based as the loop counts."""
        return max(1.0 - self.epoch / int(self.config["epochs"]), float(self.config["balance_floor"]))

    def pair_weights(self, batch: dict[str, Any], pairs: int) -> Tensor:
        """(pairs,) loss weight of each (modality, sample) pair: its sample's class weight, or the batch mean."""
        index = batch["class_index"]
        if self.config["loss_weights"]:
            if self._class_weights is None:
                raise ValueError("unimmad: method_config.loss_weights is set but the class names are unknown; call set_class_names(classes) first")
            weights = self._class_weights.to(index.device)[index]
        else:
            weights = torch.ones(index.shape[0], device=index.device)
        if not self.config["loss_weight_per_sample"]:
            weights = weights.mean().expand_as(weights)  # the official code's batch-mean weight
        return weights.repeat(pairs // weights.shape[0])

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        c = self.config
        priors, reconstructions, balance, _ = self.reconstruct(batch)
        weights = self.pair_weights(batch, priors[0].shape[0])
        decompression = focal_cosine_loss(priors, reconstructions, weights, float(c["focal_gamma"])) * float(c["decompression_scale"])
        factor = self.balance_factor()
        loss = decompression + factor * balance
        return {"loss": loss, "decompression": decompression.detach(), "balance": balance.detach(), "balance_factor": torch.tensor(factor)}

    # --- evaluation ------------------------------------------------------------------------------
    def anomaly_maps(self, priors: Sequence[Tensor], reconstructions: Sequence[Tensor], batch_size: int) -> Tensor:
        """(B, eval, eval): sqrt of the summed squares of every (scale, modality) 1 - cos map, then smoothed."""
        c = self.config
        size = int(c["eval_size"])
        maps = []
        for u, p in zip(priors, reconstructions):
            distance = 1 - F.cosine_similarity(u.float(), p.float(), dim=1).unsqueeze(1)
            maps.append(F.interpolate(distance, size=(size, size), mode="bilinear", align_corners=True).view(-1, batch_size, size, size))
        combined = torch.cat(maps, dim=0).pow(2).sum(dim=0).sqrt()
        return gaussian_smooth(combined, float(c["smoothing_sigma"]), int(c["smoothing_kernel"]), c["smoothing_boundary"])

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> Prediction:
        with evaluation_mode(self):
            priors, reconstructions, _, routing = self.reconstruct(batch)
            batch_size = int(batch["images"].shape[0])
            maps = self.anomaly_maps(priors, reconstructions, batch_size).float()
            scores = topk_fraction_mean(maps, float(self.config["score_top_fraction"]), rounding="floor")
            return Prediction(scores, maps, routing=self.routing_records(routing, batch_size))

    def routing_records(self, routing: list[list[BranchRouting]], batch_size: int) -> list[RoutingRecord]:
        """Two records: per (scale, kernel, modality) layer, one over the leaders and one over the base experts."""
        c = self.config
        leaders, bases = [], []
        for scale, scale_routing in enumerate(routing, start=1):
            for kernel, branch in zip(c["kernel_sizes"], scale_routing):
                for m, modality in enumerate(self.modalities):
                    rows = slice(m * batch_size, (m + 1) * batch_size)
                    name = f"s{scale}.k{kernel}.{modality}"
                    leaders.append((f"{name}.leaders", *leader_statistics(branch, rows)))
                    bases.append((f"{name}.bases", *base_statistics(branch, rows)))
        return [
            stack_routing(leaders, [f"leader{i}" for i in range(int(c["leaders"]))]),
            stack_routing(bases, [f"base{i}" for i in range(int(c["base_experts"]))]),
        ]


class ModalityStem(nn.Module):
    """The official ``Input_Preprocess``: learned embedding + the zero-padded stack, a 3-conv stem plus a 1x1 shortcut to 3 channels."""

    def __init__(self, channels: int, image_size: int, init_std: float = 0.02):
        super().__init__()
        self.channels, self.image_size = int(channels), int(image_size)
        self.embedding = nn.Parameter(torch.randn(channels, image_size, image_size) * init_std)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels, 4 * channels, 3, padding=1), nn.BatchNorm2d(4 * channels), nn.ReLU(inplace=True),
            nn.Conv2d(4 * channels, 3, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(channels, 3, kernel_size=1)

    def forward(self, stacked: Tensor) -> Tensor:
        if stacked.shape[-2:] != self.embedding.shape[-2:]:
            raise ValueError(
                f"unimmad: images are {tuple(stacked.shape[-2:])} but the learned input embedding is {tuple(self.embedding.shape[-2:])}; "
                f"feed images at the configured image_size {self.image_size}"
            )
        x = stacked + self.embedding
        return self.stem(x) + self.shortcut(x)


def leading_levels(model: nn.Module, x: Tensor, count: int) -> list[Tensor]:
    """The first ``count`` levels of a timm features_only model; a FeatureListNet stops after the last one needed."""
    return_layers = getattr(model, "return_layers", None)
    if return_layers is None:
        return list(model(x))[:count]
    outputs = []
    for name, module in model.items():
        x = module(x)
        if name in return_layers:
            outputs.append(x)
            if len(outputs) == count:
                break
    return outputs


def focal_cosine_loss(priors: Sequence[Tensor], reconstructions: Sequence[Tensor], weights: Tensor, gamma: float) -> Tensor:
    """Mean over (scale, pair) of weight * spatial mean of d * d.detach()^gamma, d = 1 - cos per pixel."""
    terms = []
    for u, p in zip(priors, reconstructions):
        distance = 1 - F.cosine_similarity(u.float(), p.float(), dim=1)
        terms.append((distance * distance.detach().pow(gamma)).mean(dim=(-2, -1)) * weights)
    return torch.stack(terms).mean()


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


def leader_statistics(branch: BranchRouting, rows: slice) -> tuple[Tensor, Tensor, Tensor]:
    """(gate_mean, selection_freq, entropy) over the leaders: renormalised top-K weights, selected, softmax entropy."""
    index, score = branch.index[rows], branch.score[rows].float()
    gates = torch.zeros_like(branch.probs[rows]).scatter(1, index, score)
    selected = torch.zeros_like(gates).scatter(1, index, 1.0)
    return gates, selected, _entropy(branch.probs[rows])


def base_statistics(branch: BranchRouting, rows: slice) -> tuple[Tensor, Tensor, Tensor]:
    """(gate_mean, selection_freq, entropy) over the bases: effective mixing weights, their argmax, their entropy."""
    mixing = branch.base_mixing[rows]
    selected = F.one_hot(mixing.argmax(dim=1), mixing.shape[1]).float()
    return mixing, selected, _entropy(mixing)


def _check_strides(reductions: Sequence[int]) -> None:
    if len(reductions) != LEVEL_COUNT or reductions[1] != 2 * reductions[0] or reductions[2] != 2 * reductions[1]:
        raise ValueError(
            f"unimmad: FCM fuses three levels, each at twice the previous stride (4, 8, 16 for WRN-50-2); the backbone "
            f"levels have strides {list(reductions)}: choose backbone_levels accordingly"
        )
