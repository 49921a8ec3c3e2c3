"""UniLEAD routing modes: which adapters run, sparse inference, gradients, routing records."""

from __future__ import annotations

import pytest
import torch

import harness  # noqa: F401
from methods.blocks.adapters import BottleneckAdapter, MixtureOfAdapters
from test_methods_models import one_torch_thread, tiny, tiny_batch  # noqa: F401  (autouse fixture)

TOKENS = 2 * 8 * 8  # batch 2, 8x8 grid


def rows_seen(model, batch, train: bool):
    """Rows each adapter processed, per MoA call, over one forward."""
    seen: dict[int, list[int]] = {}
    hooks = []
    for moa in (m for m in model.modules() if isinstance(m, MixtureOfAdapters)):
        for i, adapter in enumerate(moa.adapters):
            hooks.append(adapter.register_forward_hook(lambda mod, inp, out, i=i: seen.setdefault(i, []).append(inp[0].shape[0])))
    model.train(train)
    if train:
        model(batch)
    else:
        model.predict(batch)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("train", [True, False])
def test_first_runs_only_adapter_zero(train):
    model = tiny("unilead", {"routing": "first"})
    seen = rows_seen(model, tiny_batch(), train)
    assert set(seen) == {0}
    assert all(n == TOKENS for n in seen[0])


@pytest.mark.parametrize(
    "mode, overrides, train",
    [
        ("top1", {}, True),
        ("top1", {}, False),
        ("gumbel_top1", {}, False),
        ("gumbel_top1", {"gumbel_backward": "selected"}, True),
        ("gumbel_top1", {"gumbel_backward": "selected"}, False),
    ],
)
def test_sparse_modes_run_one_adapter_per_token(mode, overrides, train):
    torch.manual_seed(1)
    model = tiny("unilead", {"routing": mode, **overrides})
    calls = 3  # 1 encoder + 2 decoder layers
    seen = rows_seen(model, tiny_batch(), train)
    total = sum(sum(v) for v in seen.values())
    assert total == calls * TOKENS  # a dense path would make this 4x larger


def test_gumbel_top1_training_runs_every_adapter_for_the_dense_backward():
    torch.manual_seed(1)
    seen = rows_seen(tiny("unilead", {"routing": "gumbel_top1"}), tiny_batch(), True)
    assert set(seen) == {0, 1, 2, 3}
    assert all(n == TOKENS for v in seen.values() for n in v)


def test_softmax_runs_every_adapter_on_every_token():
    seen = rows_seen(tiny("unilead"), tiny_batch(), False)
    assert set(seen) == {0, 1, 2, 3}
    assert all(n == TOKENS for v in seen.values() for n in v)


@pytest.mark.parametrize("mode, overrides", [("softmax", {}), ("top1", {}), ("gumbel_top1", {}), ("gumbel_top1", {"gumbel_backward": "selected"})])
def test_router_receives_gradient(mode, overrides):
    torch.manual_seed(0)
    model = tiny("unilead", {"routing": mode, **overrides}).train()
    for adapter in (m for m in model.modules() if isinstance(m, BottleneckAdapter)):
        torch.nn.init.normal_(adapter.up.weight, std=0.1)  # leave the zero init so adapter outputs differ
    model(tiny_batch())["loss"].backward()
    routers = [m.router for m in model.modules() if isinstance(m, MixtureOfAdapters)]
    assert all(r.weight.grad is not None and float(r.weight.grad.abs().sum()) > 0 for r in routers)


@pytest.mark.parametrize("mode", ["softmax", "top1", "gumbel_top1", "first"])
def test_unilead_routing_record_shapes_and_sums(mode):
    prediction = tiny("unilead", {"routing": mode}).predict(tiny_batch(batch=3))
    record = prediction.routing
    assert record.gate_mean.shape == (3, 3, 4) and record.selection_freq.shape == (3, 3, 4) and record.entropy.shape == (3, 3)
    assert record.layer_names == ["encoder.0", "decoder.0", "decoder.1"]
    assert record.expert_names == ["adapter_d16", "adapter_d32", "adapter_d64", "adapter_d128"]
    assert torch.allclose(record.selection_freq.sum(-1), torch.ones(3, 3))
    if mode in ("softmax", "gumbel_top1", "first"):
        assert torch.allclose(record.gate_mean.sum(-1), torch.ones(3, 3), atol=1e-5)
    else:
        assert (record.gate_mean.sum(-1) <= 1 + 1e-6).all()
    if mode == "first":
        assert torch.equal(record.selection_freq[..., 0], torch.ones(3, 3)) and float(record.entropy.abs().sum()) == 0
    else:
        assert (record.entropy > 0).all() and (record.entropy <= torch.log(torch.tensor(4.0)) + 1e-5).all()


def test_moead_routing_record_counts_two_experts_per_token():
    record = tiny("moead").predict(tiny_batch(batch=2)).routing
    assert record.layer_names == ["round0.moe1", "round0.moe2", "round1.moe1", "round1.moe2"]
    assert torch.allclose(record.selection_freq.sum(-1), torch.full((2, 4), 2.0))
    assert torch.allclose(record.gate_mean.sum(-1), torch.ones(2, 4), atol=1e-5)
