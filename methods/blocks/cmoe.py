"""UniMMAD's cross mixture of experts (official ``mymodels/cmoe.py``, spec 3.4): one ``CrossMoE`` per scale.

CrossMoE(C): key = 1x1 C->E + GN ReLU on the general feature; query = the same on the prior;
condition = [key, query] -> 3x3 2E->E + BN + GELU -> GN ReLU -> 1x1 -> GN ReLU, globally averaged: the
router input, one vector per (image, modality) pair. One base bank (B bases x E x E x k x k, init
0.05 N(0,1)) per kernel size k in (1, 3, 5), used only by that size's ``MixtureInMixtureBranch``.
The branches' outputs are concatenated (3E) and projected 1x1 -> C + GN ReLU. ``conv_out_second`` and
``prior_head`` (1x1 E->1 with bias) are built and never used, as in the official module (so counted).

MixtureInMixtureBranch (official ``MiMoE``): ``pre`` 1x1 + GN ReLU on the key; a router Linear(E -> L
leaders), softmax (temperature 1), top-K, scores renormalised to sum 1; leader l's kernel is
sum_b softmax_b(mixing[l])[b, c_out] * bases[b][c_out] (the mixing is L x B x E, init 0.02 N(0,1),
softmax over the bases separately per output channel: MoE-in-MoE); a fixed expert kernel
initialised as the identity (delta) conv, always active; out = post(cat[fixed(x), sum_k s_k leader_k(x)])
with ``post`` 1x1 2E->E + GN ReLU. Only the top-K leaders and the fixed expert touch the output.

Dynamic filtering. Convolution is linear in its kernel, so sum_k s_k (W_k * x) = (sum_k s_k W_k) * x:
each pair's routed kernels are mixed by their scores first and the pair's two kernels (fixed, mixed)
are applied to the whole batch in ONE convolution with groups = pairs (``grouped``; the official
``dynamic_conv_experts`` uses groups = pairs x 3 on a tripled input, the same sums). ``per_sample``
is the reference: every pair's fixed and top-K experts run one by one. In eval mode without autograd
the L leader kernels are computed once and cached, together with the leader and fixed kernels folded
into ``post``'s 1x1 (linear too), so grouped inference is one grouped convolution of E outputs per pair
then ``post``'s GN ReLU; the cache is recomputed when training mode is entered or when the mixing, the
bases, the fixed expert or ``post`` change in place (an optimiser step, a state-dict load).

Balance loss per router: CV^2 of the batch importance (mean softmax per leader; population variance
over mean^2, eps 1e-8) plus z_loss_weight * mean(logsumexp(logits)^2); summed over the branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.blocks.fcm import norm_act

FILTERING_MODES = ("grouped", "per_sample")


def delta_kernel(channels: int, kernel_size: int) -> Tensor:
    """(C, C, k, k) kernel of the identity convolution: 1 at the centre of each channel's own tap."""
    kernel = torch.zeros(channels, channels, kernel_size, kernel_size)
    index = torch.arange(channels)
    kernel[index, index, kernel_size // 2, kernel_size // 2] = 1.0
    return kernel


def population_cv_squared(values: Tensor, eps: float = 1e-8) -> Tensor:
    """var / mean^2 with the population variance (the official ``NaiveGate.cv_squared``)."""
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def compose_kernels(mixing: Tensor, bases: Tensor) -> Tensor:
    """Leader kernels (..., E, E, k, k) from mixing logits (..., B, E) and bases (B, E, E, k, k): MoE-in-MoE."""
    return torch.einsum("...nc,ncikj->...cikj", mixing.softmax(dim=-2), bases)


def conv1x1_norm_act(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_act(out_channels))


@dataclass
class BranchRouting:
    """One branch's routing of N pairs: router softmax (N, L), top-K leaders and renormalised scores
    (N, K), and each pair's effective base mixing (N, B): sum_k s_k softmax over bases, averaged over
    output channels."""

    probs: Tensor
    index: Tensor
    score: Tensor
    base_mixing: Tensor


class LeaderRouter(nn.Module):
    """Linear(E -> L) on the pooled condition, softmax, top-K renormalised; returns (routing parts, balance loss)."""

    def __init__(self, dim: int, leaders: int, top_k: int, temperature: float = 1.0, z_loss_weight: float = 1e-4):
        super().__init__()
        if not 1 <= top_k <= leaders:
            raise ValueError(f"top_k must be between 1 and the number of leaders ({leaders}), got {top_k}")
        self.gate = nn.Linear(dim, leaders)
        self.top_k, self.temperature, self.z_loss_weight = int(top_k), float(temperature), float(z_loss_weight)

    def forward(self, condition: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits = self.gate(condition).float()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean() * self.z_loss_weight
        probs = F.softmax(logits / self.temperature, dim=-1)
        balance = population_cv_squared(probs.mean(dim=0)) + z_loss
        score, index = probs.topk(self.top_k, dim=-1)
        score = score / (score.sum(dim=-1, keepdim=True) + 1e-8)
        return probs, index, score, balance


class MixtureInMixtureBranch(nn.Module):
    """One kernel size's routed convolution over the key features (see the module docstring)."""

    def __init__(self, dim: int, bases: int, leaders: int, kernel_size: int, top_k: int, leader_init_std: float = 0.02,
                 temperature: float = 1.0, z_loss_weight: float = 1e-4):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.fixed_expert = nn.Parameter(delta_kernel(dim, kernel_size))
        self.router = LeaderRouter(dim, leaders, top_k, temperature, z_loss_weight)
        self.leader_mixing = nn.Parameter(torch.randn(leaders, bases, dim) * leader_init_std)
        self.pre = conv1x1_norm_act(dim, dim)
        self.post = conv1x1_norm_act(2 * dim, dim)
        self.filtering = "grouped"
        self._cache: tuple[tuple, Tensor] | None = None

    # --- leader kernels and their cache --------------------------------------------------------
    def leader_kernels(self, bases: Tensor) -> Tensor:
        """All L leader kernels (L, E, E, k, k), differentiable."""
        return compose_kernels(self.leader_mixing, bases)

    def cached_leader_kernels(self, bases: Tensor) -> Tensor:
        """The L leader kernels computed once per weight state (eval without autograd only)."""
        return self._cached(bases)["leaders"]

    def _cached(self, bases: Tensor) -> dict[str, Tensor]:
        """Leader kernels, and leader and fixed kernels folded into ``post``'s 1x1 (both linear), once per weight state."""
        tensors = (self.leader_mixing, bases, self.fixed_expert, self.post[0].weight)
        stamp = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)
        if self._cache is None or self._cache[0] != stamp:
            with torch.no_grad():
                leaders = self.leader_kernels(bases.float())
                projection = self.post[0].weight.float()[:, :, 0, 0]  # (E, 2E): fixed half, routed half
                e = projection.shape[0]
                folded = {
                    "leaders": leaders,
                    "fixed_folded": torch.einsum("oc,cikj->oikj", projection[:, :e], self.fixed_expert.float()),
                    "leaders_folded": torch.einsum("oc,lcikj->loikj", projection[:, e:], leaders),
                }
            self._cache = (stamp, folded)
        return self._cache[1]

    @property
    def has_cached_kernels(self) -> bool:
        return self._cache is not None

    def train(self, mode: bool = True) -> "MixtureInMixtureBranch":
        if mode:
            self._cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def routed_kernels(self, index: Tensor, bases: Tensor) -> Tensor:
        """Each pair's top-K leader kernels (N, K, E, E, k, k): from the cache in eval, else composed (differentiable)."""
        if not self.training and not torch.is_grad_enabled():
            return self.cached_leader_kernels(bases)[index]
        return compose_kernels(self.leader_mixing[index], bases)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, key: Tensor, condition: Tensor, bases: Tensor) -> tuple[Tensor, Tensor, BranchRouting]:
        x = self.pre(key)
        probs, index, score, balance = self.router(condition)
        routing = BranchRouting(probs, index, score, self.base_mixing(index, score))
        if self.filtering == "grouped" and not self.training and not torch.is_grad_enabled():
            cached = self._cached(bases)
            projected = folded_dynamic_filtering(x, cached["fixed_folded"], cached["leaders_folded"][index], score)
            return self.post[1:](projected), balance, routing
        kernels = self.routed_kernels(index, bases)
        if self.filtering == "grouped":
            filtered = grouped_dynamic_filtering(x, self.fixed_expert, kernels, score)
        elif self.filtering == "per_sample":
            filtered = per_sample_dynamic_filtering(x, self.fixed_expert, kernels, score)
        else:
            raise ValueError(f"dynamic filtering must be one of {', '.join(FILTERING_MODES)}, got {self.filtering!r}")
        return self.post(filtered), balance, routing

    def base_mixing(self, index: Tensor, score: Tensor) -> Tensor:
        """(N, B): sum over a pair's selected leaders of score * softmax over bases, mean over output channels."""
        with torch.no_grad():
            per_leader = self.leader_mixing.float().softmax(dim=1).mean(dim=-1)  # (L, B)
            return (score.float().unsqueeze(-1) * per_leader[index]).sum(dim=1)


def grouped_dynamic_filtering(x: Tensor, fixed: Tensor, routed: Tensor, score: Tensor) -> Tensor:
    """cat[fixed * x_n, (sum_k s_nk W_nk) * x_n] for every pair n in one grouped convolution: (N, 2E, H, W).

    x (N, E, H, W); fixed (E, E, k, k); routed (N, K, E, E, k, k); score (N, K).
    """
    n, e, h, w = x.shape
    k = fixed.shape[-1]
    mixed = torch.einsum("nt,ntcihw->ncihw", score.to(routed.dtype), routed)
    kernels = torch.stack([fixed.to(mixed.dtype).expand_as(mixed), mixed], dim=1)  # (N, 2, E, E, k, k)
    weight = kernels.reshape(n * 2 * e, e, k, k).to(x.dtype)
    y = F.conv2d(x.reshape(1, n * e, h, w), weight, padding=k // 2, groups=n)
    return y.view(n, 2 * e, h, w)


def folded_dynamic_filtering(x: Tensor, fixed: Tensor, routed: Tensor, score: Tensor) -> Tensor:
    """``post``'s 1x1 applied to ``grouped_dynamic_filtering``, as one grouped convolution of E outputs per pair.

    fixed (E, E, k, k) and routed (N, K, E, E, k, k) are already folded into the 1x1 (see the cache).
    """
    n, e, h, w = x.shape
    k = fixed.shape[-1]
    kernels = fixed.unsqueeze(0) + torch.einsum("nt,ntcihw->ncihw", score.to(routed.dtype), routed)
    y = F.conv2d(x.reshape(1, n * e, h, w), kernels.reshape(n * e, e, k, k).to(x.dtype), padding=k // 2, groups=n)
    return y.view(n, e, h, w)


def per_sample_dynamic_filtering(x: Tensor, fixed: Tensor, routed: Tensor, score: Tensor) -> Tensor:
    """The reference: each pair's fixed expert and each of its K routed experts run one by one, then summed."""
    k = fixed.shape[-1]
    outputs = []
    for n in range(x.shape[0]):
        sample = x[n : n + 1]
        fixed_out = F.conv2d(sample, fixed.to(sample.dtype), padding=k // 2)
        routed_out = sum(score[n, j].to(sample.dtype) * F.conv2d(sample, routed[n, j].to(sample.dtype), padding=k // 2) for j in range(routed.shape[1]))
        outputs.append(torch.cat([fixed_out, routed_out], dim=1))
    return torch.cat(outputs, dim=0)


class CrossMoE(nn.Module):
    """One scale's C-MoE: (general feature, prior) pairs (N, C, h, w) -> reconstruction of the prior (N, C, h, w)."""

    def __init__(self, channels: int, dim: int = 256, bases: int = 8, leaders: int = 32, top_k: int = 2, kernel_sizes: Sequence[int] = (1, 3, 5),
                 base_init_std: float = 0.05, leader_init_std: float = 0.02, temperature: float = 1.0, z_loss_weight: float = 1e-4):
        super().__init__()
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.key = conv1x1_norm_act(channels, dim)
        self.query = conv1x1_norm_act(channels, dim)
        self.condition = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.GELU(), norm_act(dim), conv1x1_norm_act(dim, dim)
        )
        self.branches = nn.ModuleList(
            MixtureInMixtureBranch(dim, bases, leaders, k, top_k, leader_init_std, temperature, z_loss_weight) for k in self.kernel_sizes
        )
        self.bases = nn.ParameterList(nn.Parameter(torch.randn(bases, dim, dim, k, k) * base_init_std) for k in self.kernel_sizes)
        self.out = conv1x1_norm_act(len(self.kernel_sizes) * dim, channels)
        self.conv_out_second = nn.Conv2d(dim, 1, kernel_size=1)  # built, never used (official)
        self.prior_head = nn.Conv2d(dim, 1, kernel_size=1)  # built, never used (official)

    def set_filtering(self, mode: str) -> None:
        if mode not in FILTERING_MODES:
            raise ValueError(f"dynamic filtering must be one of {', '.join(FILTERING_MODES)}, got {mode!r}")
        for branch in self.branches:
            branch.filtering = mode

    def forward(self, general: Tensor, prior: Tensor) -> tuple[Tensor, Tensor, list[BranchRouting]]:
        key, query = self.key(general), self.query(prior)
        condition = F.adaptive_avg_pool2d(self.condition(torch.cat([key, query], dim=1)), 1).flatten(1)
        outputs, balance, routing = [], 0.0, []
        for branch, bases in zip(self.branches, self.bases):
            out, branch_balance, branch_routing = branch(key, condition, bases)
            outputs.append(out)
            balance = balance + branch_balance
            routing.append(branch_routing)
        return self.out(torch.cat(outputs, dim=1)), balance, routing
