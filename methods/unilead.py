"""UniLEAD (Lin & Lai): UniAD's reconstruction transformer with every FFN replaced by a Mixture of Adapters.

No public code exists; spec Part A (UniLEAD items 1-8) fixes the defaults below, and every
alternative it names is a config key. Decisions for each point the paper leaves open (spec 2.3):

1. F(.) in F_out = F(F'') + A(F''): the identity (residual path): the layer computes
   LN(F'' + A(F'')). ``keep_ffn: true`` keeps UniAD's FFN in parallel (8.72M params, 3.57 GFLOPs).
2. GRA: inside each adapter, at the bottleneck width d, the paper's "nonlinearity and residual
   modulation" as its own transform and nonlinearity inside a gated residual:
   h + g * act(W h + b) (``gra_form: block_linear``), W block-diagonal with 16 x 16 blocks
   (xavier per block), b zero, g a learnable per-channel vector initialised to 0.1
   (``gra_gate: vector``; ``token_sigmoid`` makes g = sigmoid(Linear(d -> d)(h)) per token).
   Why: the earlier h + g * act(h) (``gra_form: elementwise``, g initialised to 0) is exactly
   (1 + g) * h after the ReLU, a per-channel scale; a full d x d W (``gra_form: linear``) adds
   0.068 GFLOPs (1.981 G against the paper's 1.93 G), the blocks 0.012 G (1.924 G). g starts
   non-zero because with g = 0 the gradient of W is zero until g has moved. Up-projections are
   zero-initialised, so every MoA still starts as the identity residual.
3. SE: on the mixed MoA output, squeezing over one image's tokens, reduction ``se_reduction``
   16 (4 is the alternative that reproduces thop's 1.42M; 0 disables SE).
4. Gate G: per token, Linear(D -> K) on the FFN slot's input (``router: token``);
   ``router: image`` routes each image from its mean token. Balance loss: CV^2 of the router's
   importance, weight ``balance_loss_weight`` (default 0 = off).
5. Routing modes (``routing``): ``softmax`` (dense), ``top1`` (argmax, output scaled by its
   probability), ``gumbel_top1`` (Gumbel-softmax with temperature ``gumbel_temperature``,
   annealed linearly to ``gumbel_temperature_min`` over ``gumbel_anneal_epochs`` when that is
   > 0; noise only in training, argmax in eval), ``first`` (adapter 0 only, no router).
   gumbel_top1 training is a straight-through estimator over the dense mixture
   (``gumbel_backward: dense``): the forward value is the noisy-argmax adapter's output, the
   backward that of sum_k soft_k * A_k, so every adapter and the router get gradient from every
   token (the paper's "partial gradient flow through multiple adapters", sec. 4.6); all adapters
   run in training. ``gumbel_backward: selected`` is the earlier form: only the chosen adapter
   runs, with weight 1 carrying the gradient of its soft probability. At evaluation every sparse
   mode runs only the selected adapter per token.
6. Adapter internals: Linear(D->d), ``adapter_activation`` (ReLU as UniAD), GRA, Linear(d->D),
   biases, no dropout inside adapters, no residual inside adapters (the layer's residual is F'').
7. Fusion neck: UniAD's MFCN (resize to stride 16, concatenate 272 channels) then
   input_proj Linear(272 -> 256); the paper's "fusion neck at hidden 256".
8. Layers: 4 encoder + 4 decoder (the graph that gives 1.93 GFLOPs); ``share_layers: true``
   builds one encoder and one decoder layer and applies each 4 times (1.24M params).
9. Image score: on the map upsampled (align_corners=True) to eval_size and smoothed with a
   Gaussian of sigma ``smoothing_sigma`` = 1 px and ``smoothing_kernel`` = 9 px:
   w1*max + w2*mean + w3*mean(top ``score_topk_fraction`` = 1% of pixels), w = 1/3 each,
   no average pooling before the max.
10. Training: hybrid loss ``loss_mse_weight`` * MSE + ``loss_cos_weight`` * mean(1 - cosine over
   channels per token); AdamW lr 2e-4 wd 1e-4, StepLR(800, 0.1), clip 0.1, jitter 20 / 1.0,
   batch 128, 500 epochs (paper preset).
11. Counting: our true parameter count of the paper preset is 4,616,496 (4+4 MoA graph
   4,514,224 + SE 67,712 + GRAs 34,560: gate vectors 1,920 and block W + b 32,640), reported
   beside the paper's 1.42M; see docs/methods/unilead.md for why they differ. Common-counter
   FLOPs 1.924 G (2 x MACs), true 2.161 G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import register
from methods.blocks.adapters import ACTIVATIONS, GRA_FORMS, GRA_GATES, ROUTER_GRANULARITIES, MixtureOfAdapters
from methods.blocks.routers import GUMBEL_BACKWARDS, ROUTING_MODES
from methods.blocks.scoring import gaussian_smooth, max_mean_topk
from methods.uniad import _CPU as _UNIAD_CPU
from methods.uniad import _PAPER as _UNIAD_PAPER
from methods.uniad import UniAD
from methods.config_schema import Bool, Choice, Int, ListOf, Real, Rule

_PAPER = {
    **{k: v for k, v in _UNIAD_PAPER.items() if k != "score_pool_at_224"},
    "epochs": 500,
    "batch_size": 128,
    "lr": 2e-4,
    "bottlenecks": [16, 32, 64, 128],
    "routing": "softmax",
    "router": "token",
    "adapter_activation": "relu",
    "gra_gate": "vector",
    "gra_form": "block_linear",
    "se_reduction": 16,
    "keep_ffn": False,
    "share_layers": False,
    "balance_loss_weight": 0.0,
    "gumbel_temperature": 1.0,
    "gumbel_temperature_min": 1.0,
    "gumbel_anneal_epochs": 0,
    "gumbel_backward": "dense",
    "loss_mse_weight": 1.0,
    "loss_cos_weight": 1.0,
    "smoothing_sigma": 1.0,
    "smoothing_kernel": 9,
    "score_weights": [1 / 3, 1 / 3, 1 / 3],
    "score_topk_fraction": 0.01,
}
_CPU = {
    **_PAPER,
    **{k: v for k, v in _UNIAD_CPU.items() if k != "score_pool_at_224"},
    "bottlenecks": [16, 32, 64, 128],
    "lr": _UNIAD_CPU["lr"],
    # The mean of the top 5 % of pixels alone (eq. 5 with w = 0, 0, 1): +2.6 and +3.8 class-mean
    # I-AUROC on validation_a and validation_b, then +4.3 on embedded_v3 seed 2, a split scored for
    # nothing else (docs/presets.md). The paper's 1/3 each over the top 1 % stays the paper preset's.
    "score_weights": [0.0, 0.0, 1.0],
    "score_topk_fraction": 0.05,
}


@register("unilead")
class UniLEAD(UniAD):
    """UniLEAD: neighbour-masked reconstruction transformer whose FFNs are Mixtures of Adapters."""

    version = 5  # 3: cpu preset from UniAD's at 224 px, 40 epochs; 4: without the neighbour mask; 5: cpu image score top-5 % mean (issue 12)
    presets = {"paper": _PAPER, "cpu": _CPU}
    config_schema = {
        **UniAD.config_schema,
        "bottlenecks": ListOf(Int(min=1)),
        "routing": Choice(*ROUTING_MODES),
        "router": Choice(*ROUTER_GRANULARITIES),
        "adapter_activation": Choice(*ACTIVATIONS),
        "gra_gate": Choice(*GRA_GATES),
        "gra_form": Choice(*GRA_FORMS),
        "se_reduction": Int(min=0),  # 0: no SE
        "keep_ffn": Bool(),
        "share_layers": Bool(),
        "balance_loss_weight": Real(min=0),
        "gumbel_temperature": Real(positive=True),
        "gumbel_temperature_min": Real(positive=True),
        "gumbel_anneal_epochs": Int(min=0),
        "gumbel_backward": Choice(*GUMBEL_BACKWARDS),
        "loss_mse_weight": Real(min=0),
        "loss_cos_weight": Real(min=0),
        "smoothing_sigma": Real(positive=True),
        "smoothing_kernel": Int(min=1),
        "score_weights": ListOf(Real(min=0), length=3),
        "score_topk_fraction": Real(positive=True, max=1),
    }
    config_rules = (
        *UniAD.config_rules,
        Rule("smoothing_kernel", lambda c: c["smoothing_kernel"] % 2 == 1, "an odd integer (the Gaussian kernel is centred)"),
    )

    def feedforward(self, site: str) -> nn.Module:
        """The FFN slot of layer ``site``: a Mixture of Adapters (plus UniAD's FFN with keep_ffn)."""
        c = self.config
        moa = MixtureOfAdapters(
            int(c["hidden_dim"]),
            c["bottlenecks"],
            routing=c["routing"],
            router=c["router"],
            activation=c["adapter_activation"],
            gra_gate=c["gra_gate"],
            se_reduction=int(c["se_reduction"]) or None,
            compute_balance_loss=float(c["balance_loss_weight"]) > 0,
            temperature=float(c["gumbel_temperature"]),
            gra_form=c["gra_form"],
            gumbel_backward=c["gumbel_backward"],
        )
        if not c["keep_ffn"]:
            return moa
        return FeedForwardPlusAdapters(super().feedforward(site), moa)

    def on_epoch_start(self, epoch: int) -> None:
        """Linear Gumbel temperature anneal from gumbel_temperature to gumbel_temperature_min."""
        c = self.config
        span = int(c["gumbel_anneal_epochs"])
        start, end = float(c["gumbel_temperature"]), float(c["gumbel_temperature_min"])
        tau = start if span <= 0 else start + (end - start) * min(1.0, epoch / span)
        for module in self.reconstruction.modules():
            if isinstance(module, MixtureOfAdapters):
                module.temperature = tau

    def compute_losses(self, reconstruction: Tensor, target: Tensor) -> dict[str, Tensor]:
        c = self.config
        mse = torch.mean((reconstruction - target) ** 2)
        cosine = torch.mean(1 - F.cosine_similarity(reconstruction, target, dim=1))
        loss = float(c["loss_mse_weight"]) * mse + float(c["loss_cos_weight"]) * cosine
        losses = {"reconstruction": mse, "cosine": cosine}
        weight = float(c["balance_loss_weight"])
        if weight > 0:
            balance = [b for _, _, b in self.reconstruction.routing_stats if b is not None]
            losses["balance"] = torch.stack(balance).mean() if balance else loss.new_zeros(())
            loss = loss + weight * losses["balance"]
        return {"loss": loss, **losses}

    def anomaly_maps(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        maps = super().anomaly_maps(reconstruction, target)
        return gaussian_smooth(maps, float(self.config["smoothing_sigma"]), int(self.config["smoothing_kernel"]))

    def image_scores(self, maps: Tensor) -> Tensor:
        return max_mean_topk(maps, self.config["score_weights"], float(self.config["score_topk_fraction"]))


class FeedForwardPlusAdapters(nn.Module):
    """``keep_ffn``: F(F'') + A(F'') with F the original FFN (UniLEAD eq. 6, option (i))."""

    def __init__(self, feedforward: nn.Module, adapters: MixtureOfAdapters):
        super().__init__()
        self.feedforward = feedforward
        self.adapters = adapters

    def forward(self, x: Tensor) -> Tensor:
        return self.feedforward(x) + self.adapters(x)
