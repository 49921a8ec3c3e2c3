"""UniLEAD as issue 8 asks: gumbel_top1 trains every adapter, the Gated Residual Adapter is a nonlinearity.

Facts pinned (docs/methods/unilead.md, methods/unilead.py decisions 2 and 5):
- gumbel_top1 training is a straight-through estimator over the dense mixture: the forward value
  is the noisy-argmax adapter's output bit for bit, the backward is the soft mixture's, so an
  adapter that no token selected still gets gradient (``gumbel_backward: selected`` does not);
- at evaluation only the argmax adapter runs on each token;
- the default GRA h + g * relu(W h + b) is not a per-channel linear map of h >= 0, while the
  ``elementwise`` switch h + g * relu(h) is exactly (1 + g) * h.
"""

from __future__ import annotations

import pytest
import torch

import harness  # noqa: F401
from methods.blocks.adapters import GatedResidual, MixtureOfAdapters
from methods.blocks.transformer import xavier_init_
from test_methods_models import one_torch_thread, tiny, tiny_batch  # noqa: F401  (autouse fixture)

DIM, WIDTHS, TOKENS = 32, [16, 32, 64, 128], 64


def mixture(gumbel_backward="dense", se=None, seed=0):
    torch.manual_seed(seed)
    moa = MixtureOfAdapters(DIM, WIDTHS, routing="gumbel_top1", se_reduction=se, gumbel_backward=gumbel_backward)
    xavier_init_(moa)
    for adapter in moa.adapters:
        torch.nn.init.normal_(adapter.up.weight, std=0.1)  # leave the zero init so adapter outputs differ
    with torch.no_grad():
        moa.router.bias.copy_(torch.tensor([2.0, 2.0, 2.0, -6.0]))  # adapter 3 (d=128) is rarely chosen
    return moa


def tokens(seed=1):
    return torch.randn(2, TOKENS // 2, DIM, generator=torch.Generator().manual_seed(seed))


def never_selected_run(moa, x, noise_seed=5):
    torch.manual_seed(noise_seed)
    out = moa.train()(x)
    selected = moa.last_routing[1]  # selection frequency (B, K)
    assert float(selected[:, 3].sum()) == 0, "the batch must leave adapter 3 unselected"
    return out


def test_gumbel_top1_training_gives_every_adapter_gradient_even_one_never_selected():
    moa, x = mixture(), tokens()
    never_selected_run(moa, x).pow(2).sum().backward()
    for i, adapter in enumerate(moa.adapters):
        for name, p in adapter.named_parameters():
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"adapter {i} {name} got no gradient"
    assert float(moa.router.weight.grad.abs().sum()) > 0


def test_selected_only_switch_leaves_the_unselected_adapter_without_gradient():
    moa, x = mixture("selected"), tokens()
    never_selected_run(moa, x).pow(2).sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in moa.adapters[3].parameters())
    assert all(float(p.grad.abs().sum()) > 0 for p in moa.adapters[0].parameters())


@pytest.mark.parametrize("se", [None, 16])
def test_gumbel_top1_forward_value_is_the_hard_adapter_output(se):
    moa, x = mixture(se=se), tokens()
    torch.manual_seed(7)
    out = moa.train()(x)
    torch.manual_seed(7)  # the same Gumbel noise, drawn the way the router draws it
    flat = x.reshape(-1, DIM)
    logits = moa.router(flat).float()
    gumbel = -torch.empty_like(logits).exponential_().log()
    index = ((logits + gumbel) / moa.temperature).softmax(-1).argmax(-1)
    every = torch.stack([adapter(flat) for adapter in moa.adapters], dim=1)
    expected = every[torch.arange(flat.shape[0]), index].reshape(x.shape)
    if moa.se is not None:
        expected = moa.se(expected)
    assert torch.equal(out, expected)
    assert len(set(index.tolist())) > 1  # the noisy argmax really switches between adapters


def test_gumbel_top1_eval_runs_only_the_argmax_adapter_on_each_token():
    moa, x = mixture(), tokens()
    rows = {}
    for i, adapter in enumerate(moa.adapters):
        adapter.register_forward_hook(lambda mod, inp, out, i=i: rows.__setitem__(i, inp[0].shape[0]))
    with torch.no_grad():
        first = moa.eval()(x)
        second = moa(x)
    assert torch.equal(first, second)  # no noise at evaluation
    chosen = moa.router(x.reshape(-1, DIM)).argmax(-1)
    assert rows == {i: int((chosen == i).sum()) for i in range(4) if int((chosen == i).sum())}
    assert sum(rows.values()) == TOKENS


def test_gumbel_top1_training_of_a_whole_model_reaches_every_adapter():
    torch.manual_seed(0)
    model = tiny("unilead", {"routing": "gumbel_top1"}).train()
    for moa in (m for m in model.modules() if isinstance(m, MixtureOfAdapters)):
        for adapter in moa.adapters:
            torch.nn.init.normal_(adapter.up.weight, std=0.1)
    model(tiny_batch())["loss"].backward()
    for moa in (m for m in model.modules() if isinstance(m, MixtureOfAdapters)):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in moa.parameters())


def relu_bottleneck(width, seed=0):
    return torch.relu(torch.randn(64, width, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("form", ["block_linear", "linear"])
@pytest.mark.parametrize("width", [16, 64])
def test_default_gra_is_not_a_per_channel_linear_map(form, width):
    gra = GatedResidual(width, form=form)
    h = relu_bottleneck(width)  # the GRA sees the activated down-projection, h >= 0
    h2 = relu_bottleneck(width, seed=1)
    with torch.no_grad():
        y = gra(h)
        assert not torch.allclose(gra(h + h2), y + gra(h2), atol=1e-4)  # not additive: a nonlinearity
        assert not torch.allclose(y, (1 + gra.gate) * h, atol=1e-4)  # not the old (1 + g) h
        # b starts at zero (UniAD's init), which makes the map positively homogeneous at step 0
        # only; any learnt bias breaks that too: GRA(a h) != a GRA(h)
        gra.bias.uniform_(-0.5, 0.5)
        assert not torch.allclose(gra(2.0 * h), 2.0 * gra(h), atol=1e-4)
        # no per-channel scale s fits either: the least-squares s leaves a clear residual
        s = (y * h).sum(0) / (h * h).sum(0).clamp_min(1e-12)
        assert float((y - s * h).abs().max()) > 1e-2
        gra.bias.zero_()
        pre = gra.transform(h)
        assert 0.1 < float((pre > 0).float().mean()) < 0.9  # the ReLU kink lies inside the data


def test_elementwise_switch_keeps_the_old_form_which_is_a_per_channel_scale():
    gra = GatedResidual(32, form="elementwise")
    with torch.no_grad():
        gra.gate.uniform_(-1, 1)
        h = relu_bottleneck(32)
        assert torch.allclose(gra(h), (1 + gra.gate) * h)
    assert sum(p.numel() for p in gra.parameters()) == 32


def test_gra_block_sizes_and_parameter_counts():
    assert GatedResidual(128).weight.shape == (8, 16, 16)
    assert GatedResidual(16).weight.shape == (1, 16, 16)
    assert GatedResidual(24).weight.shape == (1, 24, 24)  # not a multiple of 16: one full block
    assert GatedResidual(128, form="linear").weight.shape == (1, 128, 128)
    assert sum(p.numel() for p in GatedResidual(128).parameters()) == 8 * 16 * 16 + 128 + 128


def test_fresh_mixture_is_the_identity_branch_and_the_gra_transform_gets_gradient_once_up_moves():
    moa = MixtureOfAdapters(DIM, WIDTHS)
    xavier_init_(moa)
    x = tokens()
    assert torch.equal(moa(x), torch.zeros_like(x))  # zero-initialised up-projections
    for adapter in moa.adapters:
        assert torch.all(adapter.gra.gate == GatedResidual.GATE_INIT)
        torch.nn.init.normal_(adapter.up.weight, std=0.1)  # what the first optimiser step does
    moa(x).pow(2).sum().backward()
    for adapter in moa.adapters:
        assert float(adapter.gra.weight.grad.abs().sum()) > 0 and float(adapter.gra.gate.grad.abs().sum()) > 0
