"""UniAD (You et al., NeurIPS'22), reproduced as the fact sheet describes (spec section 1).

Backbone: timm's TF-ported EfficientNet-B4 with the AutoAugment weights lukemelas ships (blocks
giving 24/32/56/160 channels at strides 2/4/8/16). Reconstruction module at 14x14 tokens, paper
preset: 7,717,392 parameters (12 neighbour-masked attentions, 8 FFN-1024, 4 x 196 learned
queries, input/output projections, position embedding, 21 LayerNorms); q/k/v start as the packed
xavier in_proj of nn.MultiheadAttention. Neighbour mask blocks the 7x7 window (itself included;
an even window w blocks (w+1)^2, as the official generate_mask) in all three attention sites;
jitter on the 272-d tokens before input_proj, target un-jittered; FeatureMSELoss; AdamW
lr 1e-4 wd 1e-4, StepLR(800, 0.1) per epoch, 1000 epochs, batch 8, clip 0.1, seed 133.
Map: L2 over channels of rec - target, bilinear (align_corners=True) to eval_size, no smoothing.
Image score: max of the stride-1 average pooling with a 16 px window at 224 (scaled by
eval_size/224 at other evaluation sizes).
"""

from __future__ import annotations

from torch import nn

from methods import register
from methods.base import SHARED_CONFIG_SCHEMA
from methods.blocks.attention import ATTENTION_IMPLS, ATTENTION_INITS, MASK_SPANS
from methods.blocks.experts import FeedForward
from methods.blocks.transformer import ReconstructionTransformer
from methods.config_schema import Bool, Choice, Int, ListOf, Nullable, OneOf, Real, Rule
from methods.reconstruction import TokenReconstructionMethod

_PAPER = {
    # The official code runs lukemelas' B4 with its AutoAugment TF-ported weights: timm's
    # TF port (same-padding convolutions) with those weights (spec 1.1 "Backbone").
    "backbone": "tf_efficientnet_b4.aa_in1k",
    "backbone_levels": [0, 1, 2, 3],
    "token_stride": None,  # the neck's output stride (official outstrides [16]); null: the coarsest level's
    "feature_dtype": "float32",  # the feature cache's storage precision (float16: half the disk, methods/base.py)
    "backbone_weights": "auto",
    "image_size": 224,
    "eval_size": 224,
    "epochs": 1000,
    "batch_size": 8,
    "amp": False,
    "grad_clip": 0.1,
    "seed": 133,
    "hidden_dim": 256,
    "num_heads": 8,
    "ffn_dim": 1024,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "dropout": 0.1,
    "neighbour_window": 7,
    "neighbour_mask_sites": [True, True, True],
    "neighbour_mask_span": "official",  # | "exact": how an even window is blocked (neighbour_mask)
    "attention_impl": "sdpa",  # | "baddbmm" | "matmul": same function, sdpa fastest (bench_attention.py)
    "attention_init": "packed_xavier",  # | "per_projection_xavier"
    "jitter_scale": 20.0,
    "jitter_prob": 1.0,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "lr_step_epochs": 800,
    "lr_gamma": 0.1,
    "score_pool_at_224": 16,
}

_CPU = {
    **_PAPER,
    "backbone": "tf_efficientnet_lite0",
    "backbone_levels": [1, 2, 3],
    # Tuned on validation_a, validation_b and the seed-1 copies of embedded and embedded_v3, never on
    # an embedded seed-0 test split (docs/presets.md). 224 px (14x14 tokens) instead of 160 (10x10):
    # the features' own nearest-neighbour ceiling rises from 0.860 to 0.922 on validation_a.
    "image_size": 224,
    "eval_size": 224,
    # No neighbour mask (the official config's neighbor_mask.mask: [False, False, False]): at this
    # training length the model has not learnt the identity shortcut the mask guards against, and the
    # mask costs it the context it reconstructs from: +5.3 class-mean I-AUROC on embedded_v3 seed 1,
    # +4.3 on validation_b (docs/presets.md). The window stays for `--set neighbour_mask_sites=...`.
    "neighbour_mask_sites": [False, False, False],
    "neighbour_window": 3,
    "epochs": 40,  # the model is underfit at 20 (loss 13.2 against a feature variance of 32.8): +7 points at 224
    "batch_size": 16,
    "seed": 0,
    "hidden_dim": 128,  # 256 changed nothing (docs/presets.md)
    "num_heads": 4,
    "ffn_dim": 256,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.0,
    # 20 (the paper's) is noise of about 1.7x a feature's own std at 176 channels: with a short run
    # it drowns the signal; 2 kept the mean I-AUROC highest on the tuning copy (0.84 at 5, 0.86 at 2, 0.855 at 1).
    "jitter_scale": 2.0,
    "lr": 2e-3,
    "lr_step_epochs": 1000,
    # Two tokens: the 224 px maps are noisier per pixel than 160 px ones; +4 to 5 points over 16 px on validation_a.
    "score_pool_at_224": 32,
}

@register("uniad")
class UniAD(TokenReconstructionMethod):
    """UniAD: neighbour-masked transformer reconstruction of frozen multi-level features."""

    version = 4  # 2: official even-window mask, packed q/k/v init, TF-ported B4; 3: cpu preset at 224 px, 40 epochs; 4: cpu preset without the neighbour mask (issue 12)
    presets = {"paper": _PAPER, "cpu": _CPU}
    config_schema = {
        **SHARED_CONFIG_SCHEMA,
        "token_stride": Nullable(Int(min=1)),  # one of the backbone levels' strides (methods/blocks/neck.py)
        "hidden_dim": Int(min=1),
        "num_heads": Int(min=1),
        "ffn_dim": Int(min=1),
        "encoder_layers": Int(min=1),
        "decoder_layers": Int(min=1),
        "dropout": Real(min=0, below=1),
        "neighbour_window": Nullable(OneOf(Int(min=1), Choice("auto"))),  # null = auto
        "neighbour_mask_sites": ListOf(Bool(), length=3),
        "neighbour_mask_span": Choice(*MASK_SPANS),
        "attention_impl": Choice(*ATTENTION_IMPLS),
        "attention_init": Choice(*ATTENTION_INITS),
        "jitter_scale": Real(min=0),
        "jitter_prob": Real(min=0, max=1),
        "lr": Real(min=0.0),  # 0 freezes the weights: how sharding tests compare worker counts
        "weight_decay": Real(min=0),
        "lr_step_epochs": Int(min=1),
        "lr_gamma": Real(positive=True),
        "score_pool_at_224": Int(min=1),
    }
    config_rules = (
        Rule("num_heads", lambda c: c["hidden_dim"] % c["num_heads"] == 0, "a divisor of hidden_dim (each head gets hidden_dim / num_heads channels)"),
    )

    def build_reconstruction(self, channels: int) -> nn.Module:
        c = self.config
        return ReconstructionTransformer(
            in_channels=channels,
            dim=int(c["hidden_dim"]),
            heads=int(c["num_heads"]),
            grid=self.grid,
            encoder_layers=int(c["encoder_layers"]),
            decoder_layers=int(c["decoder_layers"]),
            feedforward_factory=self.feedforward,
            dropout=float(c["dropout"]),
            window=self.window,
            mask_sites=c["neighbour_mask_sites"],
            share_layers=bool(c.get("share_layers", False)),
            mask_span=c["neighbour_mask_span"],
            attention_impl=c["attention_impl"],
            attention_init=c["attention_init"],
        )

    def feedforward(self, site: str) -> nn.Module:
        """The FFN slot of layer ``site``: UniAD's FFN."""
        c = self.config
        return FeedForward(int(c["hidden_dim"]), int(c["ffn_dim"]), float(c["dropout"]))
