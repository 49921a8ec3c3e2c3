"""Shared skeleton of the feature-reconstruction methods (UniAD, MoEAD, UniLEAD; spec section 1).

Frozen backbone levels -> MultiLevelFeatureNeck (B, C, h, w) -> tokens (B, h*w, C) -> feature
jitter (training only; the target stays clean) -> a reconstruction module -> (B, C, h, w).
Subclasses build the reconstruction module, say how the loss is formed and how a map becomes an
image score; this class owns the data flow, prediction and routing records.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from methods.base import AnomalyMethod, Prediction, RoutingRecord, check_features, evaluation_mode, stack_routing
from methods.blocks.attention import neighbour_window
from methods.blocks.jitter import FeatureJitter
from methods.blocks.neck import MultiLevelFeatureNeck
from methods.blocks.scoring import feature_error_map, max_of_average_pooled, pool_window
from methods.blocks.transformer import xavier_init_


class TokenReconstructionMethod(AnomalyMethod):
    """Base of the UniAD family; subclasses implement ``build_reconstruction`` and may override the
    loss (default MSE), the map (default L2 error, upsampled) and the score (default UniAD's)."""

    def __init__(self, config: dict[str, Any], feature_channels: Sequence[int], feature_reductions: Sequence[int]):
        super().__init__(config, feature_channels, feature_reductions)
        self.neck = MultiLevelFeatureNeck(self.feature_channels, self.feature_reductions, config.get("token_stride"))
        self.grid = self.neck.grid_size(int(config["image_size"]))
        self.window = neighbour_window(config.get("neighbour_window", "auto"), self.grid)
        self.jitter = FeatureJitter(float(config["jitter_scale"]), float(config["jitter_prob"]))
        self.reconstruction = self.build_reconstruction(self.neck.out_channels)
        xavier_init_(self.reconstruction)

    # --- subclass hooks ---------------------------------------------------------------------
    def build_reconstruction(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def compute_losses(self, reconstruction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Default: UniAD's FeatureMSELoss (mean over every element)."""
        mse = torch.mean((reconstruction - target) ** 2)
        return {"loss": mse, "reconstruction": mse}

    def anomaly_maps(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        return feature_error_map(reconstruction, target, int(self.config["eval_size"]))

    def image_scores(self, maps: Tensor) -> Tensor:
        """Default: UniAD's ``max`` score, max of the 16 px (at 224) stride-1 average pooling."""
        window = pool_window(int(self.config["eval_size"]), int(self.config["score_pool_at_224"]))
        return max_of_average_pooled(maps, window)

    def routing_record(self) -> RoutingRecord | None:
        """Per-sample statistics of the last forward's routed layers; None for unrouted methods."""
        stats = [(name, *routing) for name, routing, _ in getattr(self.reconstruction, "routing_stats", []) if routing is not None]
        if not stats:
            return None
        return stack_routing(stats, self.expert_names())

    def expert_names(self) -> list[str]:
        for module in self.reconstruction.modules():
            if hasattr(module, "last_routing"):
                return list(module.expert_names)
        return []

    def level_alignment(self):
        """The neck's resize of every level to the token grid, exact per image: the cache stores the
        levels at that grid (about a ninth of B4's raw levels at 224) and the neck then passes them through."""
        h, w = self.grid
        return (f"neck bilinear align_corners=True to {h}x{w}",
                lambda levels: list(torch.split(self.neck(levels), self.neck.channels, dim=1)))

    # --- data flow ----------------------------------------------------------------------------
    def reconstruction_module(self) -> nn.Module:
        return self.reconstruction

    def reconstruct(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Backbone levels -> (reconstruction, target), both (B, C, h, w); jitter only in training."""
        check_features(self, features)
        target = self.neck([f.float() for f in features])
        b, c, h, w = target.shape
        if (h, w) != self.grid:
            raise ValueError(
                f"{self.name}: features give a {h}x{w} token grid but the model was built for {self.grid[0]}x{self.grid[1]} "
                f"(image_size={self.config['image_size']}); extract features at image_size {self.config['image_size']} "
                "or rebuild the method with the image size you use"
            )
        tokens = target.flatten(2).transpose(1, 2)
        rec = self.reconstruction(self.jitter(tokens))
        return rec.transpose(1, 2).reshape(b, c, h, w), target

    def training_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        reconstruction, target = self.reconstruct(batch["features"])
        return self.compute_losses(reconstruction, target)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> Prediction:
        with evaluation_mode(self):
            reconstruction, target = self.reconstruct(batch["features"])
            maps = self.anomaly_maps(reconstruction, target).float()
            return Prediction(self.image_scores(maps).float(), maps, self.routing_record())
