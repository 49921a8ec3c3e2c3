"""Dinomaly's optimiser and schedule (spec 7 "Training"; AnomalyMoE uses both, spec 4.4).

StableAdamW (the official ``optimizers/StableAdamW.py``), per parameter tensor p with gradient g:
  p <- p * (1 - lr * wd)                                    decoupled decay, before the update
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  v_max <- max(v_max, v) with amsgrad
  denom = sqrt(v_max or v) / sqrt(1 - b2^t) + eps
  s = max(1, rms(g / denom) / clip_threshold)               the update clipping of the "stable" variant
  p <- p - lr / (1 - b1^t) / s * m / denom
WarmCosineLR (the official WarmCosineScheduler), stepped once per iteration: a linear warm-up from
``start`` to the base lr over ``warmup`` iterations (np.linspace, both ends included), then a
cosine from the base lr towards ``final`` over the remaining ``total - warmup`` iterations, and
``final`` from iteration ``total`` on.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class StableAdamW(Optimizer):
    """AdamW with amsgrad and per-tensor update clipping by the RMS of g / denom (Dinomaly's)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, clip_threshold: float = 1.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"StableAdamW: invalid lr {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, clip_threshold=clip_threshold)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if p.grad.is_sparse:
            raise RuntimeError("StableAdamW does not support sparse gradients")
        grad, state = p.grad, self.state[p]
        beta1, beta2 = group["betas"]
        p.mul_(1 - group["lr"] * group["weight_decay"])
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        second = exp_avg_sq
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = (second.sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(group["eps"])
        rms = float((grad / denom).norm(2)) / math.sqrt(grad.numel())
        scale = max(1.0, rms / group["clip_threshold"])
        p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1 ** state["step"]) / scale)


def warm_cosine_value(iteration: int, base: float, final: float, total: int, warmup: int, start: float = 0.0) -> float:
    """The learning rate of WarmCosineLR at ``iteration`` (0-based)."""
    if iteration >= total:
        return final
    if iteration < warmup:
        return start + (base - start) * (iteration / (warmup - 1) if warmup > 1 else 0.0)
    i, n = iteration - warmup, total - warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))


class WarmCosineLR(LRScheduler):
    """Every group's lr follows ``warm_cosine_value`` from the optimizer's lr; step once per iteration."""

    def __init__(self, optimizer: Optimizer, final: float, total: int, warmup: int = 0, start: float = 0.0, last_epoch: int = -1):
        if total <= warmup:
            raise ValueError(f"WarmCosineLR: total iterations {total} must exceed the {warmup} warm-up iterations")
        self.final, self.total, self.warmup, self.start = float(final), int(total), int(warmup), float(start)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [warm_cosine_value(self.last_epoch, base, self.final, self.total, self.warmup, self.start) for base in self.base_lrs]
