"""CLUB, the sampled contrastive log-ratio upper bound of mutual information (Cheng et al. 2020), as
AnomalyMoE's expert information repulsion uses it (paper eq. 4; spec 4.4 "EIR").

q(y | x) is a diagonal Gaussian: mu = Linear(D, D/2) -> ReLU -> Linear(D/2, D), log-variance the
same followed by tanh. The bound of a batch of pairs (x_b, y_b) is
    1/2 * mean_b [ sum_d -(mu_b - y_b)^2 / var_b  -  sum_d -(mu_b - y_pi(b))^2 / var_b ]
with pi a random permutation of the batch (torch's RNG); the estimator learns by maximising the
log-likelihood mean_b sum_d -(mu_b - y_b)^2 / (2 var_b).

ClubEstimator is the official MIEstimator: one LayerNorm over both families' 768-d features, one
CLUB per family ("patch", "global"), the bound and the learning loss averaged over the families.
It trains in its own alternating step with its own Adam and gradient clipping (``step``): its
gradient is taken with ``torch.autograd.grad`` (so a DistributedDataParallel wrapper's hooks never
fire mid-forward) and averaged over ranks by hand. Its Adam state is saved with the module
(``get_extra_state``), so a resumed run goes on with the same moments.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

FeaturePairs = Mapping[str, tuple[Tensor, Tensor]]  # family -> (x (B, D), y (B, D))
FAMILIES = ("patch", "global")


class ClubSampled(nn.Module):
    """The variational q(y | x) of CLUBSample: mean and tanh-bounded log-variance MLPs of width dim / 2."""

    def __init__(self, dim: int):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))
        self.logvar = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim), nn.Tanh())

    def upper_bound(self, x: Tensor, y: Tensor) -> Tensor:
        mu, logvar = self.mu(x), self.logvar(x)
        shuffled = y[torch.randperm(y.shape[0]).to(y.device)]
        positive = -((mu - y) ** 2) / logvar.exp()
        negative = -((mu - shuffled) ** 2) / logvar.exp()
        return (positive.sum(-1) - negative.sum(-1)).mean() / 2.0

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        mu, logvar = self.mu(x), self.logvar(x)
        return (-((mu - y) ** 2) / 2.0 / logvar.exp()).sum(dim=1).mean(dim=0)


class ClubEstimator(nn.Module):
    """LayerNorm + one CLUB per expert family; ``forward`` is the bound, ``step`` the estimator's own update."""

    def __init__(self, dim: int, lr: float, weight_decay: float, grad_clip: float):
        super().__init__()
        self.normalizer = nn.LayerNorm(dim)
        self.families = nn.ModuleDict({name: ClubSampled(dim) for name in FAMILIES})
        self.grad_clip = float(grad_clip)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=float(lr), weight_decay=float(weight_decay))

    def forward(self, pairs: FeaturePairs) -> Tensor:
        """The mean over the given families of the CLUB bound between their LayerNormed feature pairs."""
        bounds = [self.families[name].upper_bound(self.normalizer(x), self.normalizer(y)) for name, (x, y) in pairs.items()]
        return torch.stack(bounds).mean()

    def learning_loss(self, pairs: FeaturePairs) -> Tensor:
        """The estimator's loss: minus the mean over families of the log-likelihood of the matched pairs."""
        nll = [-self.families[name].log_likelihood(self.normalizer(x), self.normalizer(y)) for name, (x, y) in pairs.items()]
        return torch.stack(nll).mean()

    def frozen_parameters(self) -> dict[str, Tensor]:
        """Detached copies of the parameters: the bound through ``torch.func.functional_call`` with these gives the
        experts their gradient while the estimator gets none, and survives the in-place estimator step."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def step(self, pairs: FeaturePairs) -> Tensor:
        """One estimator update on feature pairs computed without gradient; returns its loss."""
        params = [p for p in self.parameters()]
        loss = self.learning_loss({name: (x.detach(), y.detach()) for name, (x, y) in pairs.items()})
        grads = torch.autograd.grad(loss, params)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for grad in grads:
                dist.all_reduce(grad)
                grad /= dist.get_world_size()
        for p, grad in zip(params, grads):
            p.grad = grad
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        for p in params:
            p.grad = None  # the loop's optimizer and gradient clipping must never see these
        return loss.detach()

    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
