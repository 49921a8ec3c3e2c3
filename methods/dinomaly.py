"""Dinomaly (Guo et al., CVPR'25), as the official dinomaly_mvtec_uni.py / ViTill does it (spec section 7).

Encoder: frozen DINOv2-reg ViT-B/14 (timm vit_base_patch14_reg4_dinov2.lvd142m) run up to block 9;
the target blocks [2..9] are the backbone levels (28x28 patch tokens of 768 at 392 px).
Bottleneck: the noisy bMlp 768 -> 3072 -> 768 (GELU, Dropout 0.2 on input, hidden and output) on
the mean of the 8 encoder layers. Decoder: 8 ViT blocks (LinearAttention2 with the elu + 1 kernel,
12 heads, mlp ratio 4, qkv bias, LayerNorm eps 1e-8, no dropout); their outputs are reversed.
Loose reconstruction: encoder layers and reversed decoder outputs are each fused by mean into the
groups [0..3] and [4..7]. Loss global_cosine_hm_percent: per group, mean over images of 1 - cosine
of the flattened maps, the decoder gradient x0.1 at the points whose 1 - cosine lies below the
top-(1 - p) threshold over the batch, p = min(0.9 * iteration / 1000, 0.9); averaged over groups.
Training: StableAdamW (betas 0.9/0.999, eps 1e-10, wd 1e-4, amsgrad) with WarmCosine lr 2e-3 ->
2e-4 (100 warm-up iterations, 10k iterations), batch 16, gradient clip 0.1, Linear layers
trunc-normal std 0.01. Map: mean over the 2 groups of (1 - cosine), bilinear (align_corners=True)
to the input size, bilinear to 256, 5x5 Gaussian sigma 4 (zero padding); image score: mean of the
top int(1% of pixels). Trainable parameters: 61,425,408 (bottleneck 4,722,432 + 8 x 7,087,872).

The iteration count lives in the model (a buffer saved with the weights, so a resumed run goes on
with the same p); the schedule steps once per iteration. Where this graph differs from the
official one because of how the harness feeds methods (no centre crop, no [CLS]/register tokens in
the decoder), and what the cpu preset changes, is in docs/methods/dinomaly.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import register
from methods.base import SHARED_CONFIG_SCHEMA, AnomalyMethod, Prediction, check_features, evaluation_mode, topk_fraction_mean
from methods.blocks.optim import StableAdamW, WarmCosineLR
from methods.blocks.cosine import global_cosine_distance, pixel_cosine_distance_maps
from methods.blocks.scoring import SMOOTHING_BOUNDARIES, gaussian_smooth
from methods.blocks.vit import NoisyBottleneck, ViTBlock, dinomaly_init_
from methods.config_schema import Bool, Choice, Int, ListOf, Nullable, Real, Rule

_PAPER = {
    "backbone": "vit_base_patch14_reg4_dinov2.lvd142m",
    "backbone_levels": [2, 3, 4, 5, 6, 7, 8, 9],
    "feature_dtype": "float32",  # the feature cache's storage precision (float16: half the disk, methods/base.py)
    "backbone_weights": "auto",
    "image_size": 392,  # the official resizes to 448 and centre-crops 392; the harness resizes to 392
    "eval_size": 256,
    # 10k iterations: MVTec AD's 3629 training images make 227 batches of 16 per epoch (the loop
    # keeps the last partial batch), so 44 epochs = 9,988 iterations; `iterations` drives the schedule.
    "epochs": 44,
    "batch_size": 16,
    "amp": False,
    "grad_clip": 0.1,
    "seed": 1,
    "token_grid": None,  # null: the levels' own grid (28x28)
    "token_dim": None,  # null: the levels' own width (768), no embedding
    "bottleneck_ratio": 4,
    "bottleneck_dropout": 0.2,
    "decoder_layers": 8,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "fuse_encoder": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "fuse_decoder": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "init_std": 0.01,
    "hard_mining_p": 0.9,
    "hard_mining_ramp_iterations": 1000,
    "hard_mining_factor": 0.1,
    "lr": 2e-3,
    "final_lr": 2e-4,
    "warmup_iterations": 100,
    "iterations": 10000,
    "weight_decay": 1e-4,
    "betas": [0.9, 0.999],
    "eps": 1e-10,
    "amsgrad": True,
    "update_clip": 1.0,  # StableAdamW's clip_threshold
    "smoothing_sigma": 4.0,
    "smoothing_kernel": 5,
    "smoothing_boundary": "zeros",
    "score_top_fraction": 0.01,
}

_CPU = {
    **_PAPER,
    # Packaged lite0 levels at strides 4/8/16 play the encoder layers: each is resized to the
    # stride-8 grid and embedded isometrically (frozen orthonormal columns) into 128 channels.
    "backbone": "tf_efficientnet_lite0",
    "backbone_levels": [1, 2, 3],
    "image_size": 160,
    "eval_size": 112,
    "epochs": 12,  # 12 x 23 batches of 16 (the embedded dataset's 360 training images) = 276 iterations
    "seed": 0,
    "token_grid": 20,
    "token_dim": 128,
    "decoder_layers": 4,
    "num_heads": 4,
    "fuse_encoder": [[0, 1], [2]],
    "fuse_decoder": [[0, 1], [2, 3]],
    "hard_mining_ramp_iterations": 28,  # 10% of the iterations, as 1000 of 10k
    "warmup_iterations": 3,  # 1%, as 100 of 10k
    "iterations": 276,
}


def _groups_within(key: str, count_key: str | None):
    def holds(c) -> bool:
        count = len(c["backbone_levels"]) if count_key is None else c[count_key]
        return all(0 <= i < count for group in c[key] for i in group)

    return holds


@register("dinomaly")
class Dinomaly(AnomalyMethod):
    """Dinomaly: a noisy bottleneck and a linear-attention decoder reconstruct frozen ViT layers in two loose groups."""

    version = 1
    presets = {"paper": _PAPER, "cpu": _CPU}
    config_schema = {
        **SHARED_CONFIG_SCHEMA,
        "token_grid": Nullable(Int(min=1)),
        "token_dim": Nullable(Int(min=1)),
        "bottleneck_ratio": Real(positive=True),
        "bottleneck_dropout": Real(min=0, below=1),
        "decoder_layers": Int(min=1),
        "num_heads": Int(min=1),
        "mlp_ratio": Real(positive=True),
        "fuse_encoder": ListOf(ListOf(Int(min=0))),
        "fuse_decoder": ListOf(ListOf(Int(min=0))),
        "init_std": Real(positive=True),
        "hard_mining_p": Real(min=0, below=1),
        "hard_mining_ramp_iterations": Int(min=0),
        "hard_mining_factor": Real(min=0, max=1),
        "lr": Real(min=0.0),  # 0 freezes the weights: how sharding tests compare worker counts
        "final_lr": Real(min=0.0),
        "warmup_iterations": Int(min=0),
        "iterations": Int(min=1),
        "weight_decay": Real(min=0),
        "betas": ListOf(Real(min=0, below=1), length=2),
        "eps": Real(min=0),
        "amsgrad": Bool(),
        "update_clip": Real(positive=True),
        "smoothing_sigma": Real(min=0),
        "smoothing_kernel": Int(min=1),
        "smoothing_boundary": Choice(*SMOOTHING_BOUNDARIES),
        "score_top_fraction": Real(positive=True, max=1),
    }
    config_rules = (
        Rule("fuse_encoder", _groups_within("fuse_encoder", None), "groups of indices into backbone_levels"),
        Rule("fuse_decoder", _groups_within("fuse_decoder", "decoder_layers"), "groups of indices into the decoder blocks (0 = the last)"),
        Rule("fuse_decoder", lambda c: len(c["fuse_decoder"]) == len(c["fuse_encoder"]), "as many groups as fuse_encoder"),
        Rule("iterations", lambda c: c["iterations"] > c["warmup_iterations"], "more than warmup_iterations"),
    )

    def __init__(self, config: dict[str, Any], feature_channels: Sequence[int], feature_reductions: Sequence[int]):
        super().__init__(config, feature_channels, feature_reductions)
        c = self.config
        size = int(c["image_size"])
        side = int(c["token_grid"] or -(-size // self.feature_reductions[0]))
        self.grid = (side, side)
        self.encoder_layers = EncoderLayers(self.feature_channels, side, c["token_dim"], int(c["seed"]))
        dim = self.encoder_layers.dim
        if dim % int(c["num_heads"]):
            raise ValueError(f"dinomaly: width {dim} is not divisible by num_heads={c['num_heads']}")
        self.bottleneck = NoisyBottleneck(dim, int(round(dim * float(c["bottleneck_ratio"]))), float(c["bottleneck_dropout"]))
        self.decoder = nn.ModuleList(ViTBlock(dim, int(c["num_heads"]), float(c["mlp_ratio"])) for _ in range(int(c["decoder_layers"])))
        dinomaly_init_(self.reconstruction_module(), float(c["init_std"]))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def reconstruction_module(self) -> nn.Module:
        return nn.ModuleList([self.bottleneck, self.decoder])

    # --- data flow ----------------------------------------------------------------------------
    def reconstruct(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone levels -> (encoder groups, decoder groups), each a list of (B, D, h, w) maps."""
        check_features(self, features)
        layers = self.encoder_layers(features)
        x = self.bottleneck(torch.stack(layers).mean(0))
        outputs = []
        for block in self.decoder:
            x = block(x)
            outputs.append(x)
        outputs.reverse()
        c = self.config
        return self._fuse(layers, c["fuse_encoder"]), self._fuse(outputs, c["fuse_decoder"])

    def _fuse(self, tokens: list[Tensor], groups: list[list[int]]) -> list[Tensor]:
        """Mean of each group's (B, N, D) token layers, as (B, D, h, w) maps."""
        b, _, d = tokens[0].shape
        return [torch.stack([tokens[i] for i in group]).mean(0).transpose(1, 2).reshape(b, d, *self.grid) for group in groups]

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        c = self.config
        p = hard_mining_p(int(self.iteration), float(c["hard_mining_p"]), int(c["hard_mining_ramp_iterations"]))
        encoder, decoder = self.reconstruct([f.float() for f in batch["features"]])
        loss = hard_mining_cosine_loss(encoder, decoder, p, float(c["hard_mining_factor"]))
        self.iteration += 1
        return {"loss": loss, "cosine": loss.detach(), "hard_mining_p": torch.tensor(p)}

    def anomaly_maps(self, encoder: list[Tensor], decoder: list[Tensor]) -> Tensor:
        """Mean over groups of (1 - cosine), bilinear to the input size, then to eval_size, smoothed."""
        c = self.config
        size, out = int(c["image_size"]), int(c["eval_size"])
        maps = pixel_cosine_distance_maps(encoder, decoder, size).mean(1, keepdim=True)
        maps = F.interpolate(maps, size=(out, out), mode="bilinear", align_corners=False)[:, 0]
        return gaussian_smooth(maps, float(c["smoothing_sigma"]), int(c["smoothing_kernel"]), c["smoothing_boundary"])

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> Prediction:
        with evaluation_mode(self):
            encoder, decoder = self.reconstruct([f.float() for f in batch["features"]])
            maps = self.anomaly_maps(encoder, decoder).float()
            return Prediction(topk_fraction_mean(maps, float(self.config["score_top_fraction"]), rounding="floor"), maps)

    def configure_optimizers(self):
        """StableAdamW over the bottleneck and decoder, WarmCosine stepped every iteration."""
        return stable_adamw_warm_cosine([p for p in self.parameters() if p.requires_grad], self.config)


def stable_adamw_warm_cosine(params, c: dict[str, Any]):
    """(StableAdamW, WarmCosineLR, "step") from the config keys lr, betas, eps, weight_decay, amsgrad,
    update_clip, final_lr, iterations and warmup_iterations (Dinomaly's; AnomalyMoE's too, spec 4.4)."""
    optimizer = StableAdamW(
        params,
        lr=float(c["lr"]),
        betas=tuple(float(b) for b in c["betas"]),
        eps=float(c["eps"]),
        weight_decay=float(c["weight_decay"]),
        amsgrad=bool(c["amsgrad"]),
        clip_threshold=float(c["update_clip"]),
    )
    scheduler = WarmCosineLR(optimizer, float(c["final_lr"]), int(c["iterations"]), int(c["warmup_iterations"]))
    return optimizer, scheduler, "step"


class EncoderLayers(nn.Module):
    """Backbone levels (B, C_l, H_l, W_l) -> encoder token layers (B, side*side, D), frozen.

    Each level is brought to the side x side grid (area-averaged when larger, bilinear when
    smaller) and, when ``dim`` is given, embedded by a fixed matrix with orthonormal columns
    (C_l <= dim), which keeps every inner product, so cosine distances are the level's own. With
    ViT levels (one grid, one width) and dim null this is only the NCHW -> tokens reshape.
    """

    def __init__(self, channels: Sequence[int], side: int, dim: int | None, seed: int):
        super().__init__()
        self.side = side
        if dim is None and len(set(channels)) != 1:
            raise ValueError(f"dinomaly: levels of {list(channels)} channels need token_dim (a common width >= {max(channels)})")
        self.dim = int(dim or channels[0])
        if max(channels) > self.dim:
            raise ValueError(f"dinomaly: token_dim {self.dim} is narrower than a level of {max(channels)} channels; the embedding must keep cosines")
        generator = torch.Generator().manual_seed(seed)
        for i, c in enumerate(channels):
            embedding = torch.linalg.qr(torch.randn(self.dim, c, generator=generator))[0].T if dim is not None else None
            self.register_buffer(f"embedding{i}", embedding)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [self._tokens(f, getattr(self, f"embedding{i}")) for i, f in enumerate(features)]

    def _tokens(self, level: Tensor, embedding: Tensor | None) -> Tensor:
        if level.shape[-1] > self.side:
            level = F.adaptive_avg_pool2d(level, self.side)
        elif level.shape[-1] < self.side:
            level = F.interpolate(level, size=(self.side, self.side), mode="bilinear", align_corners=False)
        tokens = level.flatten(2).transpose(1, 2)
        return tokens if embedding is None else tokens @ embedding


def hard_mining_p(iteration: int, final: float, ramp_iterations: int) -> float:
    """Dinomaly's ramp: p = min(final * iteration / ramp, final); ``final`` at once when ramp is 0."""
    return final if ramp_iterations <= 0 else min(final * iteration / ramp_iterations, final)


def scale_easy_gradients(decoded: Tensor, distance: Tensor, p: float, factor: float) -> Tensor:
    """``decoded`` (B, D, h, w) unchanged, its gradient x ``factor`` where ``distance`` (B, h, w) is below the
    k-th largest distance over the batch, k = int(points * (1 - p)) (the official modify_grad hook)."""
    k = max(1, int(distance.numel() * (1 - p)))
    threshold = distance.flatten().topk(k).values[-1]
    scale = torch.where(distance < threshold, factor, 1.0).unsqueeze(1).to(decoded.dtype)
    return decoded.detach() + (decoded - decoded.detach()) * scale


def hard_mining_cosine_loss(encoder: Sequence[Tensor], decoder: Sequence[Tensor], p: float, factor: float) -> Tensor:
    """global_cosine_hm_percent: mean over groups of mean_b(1 - cos(flat enc_b, flat dec_b)), easy points' gradient x factor."""
    total = 0.0
    for target, decoded in zip(encoder, decoder):
        target = target.detach()
        with torch.no_grad():
            distance = 1 - F.cosine_similarity(target, decoded, dim=1)
        decoded = scale_easy_gradients(decoded, distance, p, factor)
        total = total + global_cosine_distance(target, decoded).mean()
    return total / len(encoder)
