"""Method registry and contract: presets, overrides, errors, robustness to a broken method module."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import harness  # noqa: F401  (applies the torchvision shim before timm is imported anywhere)
import methods
from methods.base import RoutingRecord, summarise_routing, summarise_routing_records
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)



def test_three_methods_are_registered_with_paper_and_cpu_presets():
    assert {"uniad", "moead", "unilead"} <= set(methods.available())
    for name in ("uniad", "moead", "unilead"):
        cls = methods.get(name)
        assert {"paper", "cpu"} <= set(cls.presets)
        config = methods.preset_config(name, "paper")
        json.dumps(config)
        for key in ("backbone", "backbone_levels", "image_size", "eval_size", "epochs", "batch_size", "amp", "grad_clip", "seed"):
            assert key in config, (name, key)


def test_overrides_merge_key_by_key_and_do_not_touch_the_preset():
    config = methods.preset_config("unilead", "cpu", {"routing": "top1", "bottlenecks": [16, 32]})
    assert config["routing"] == "top1" and config["bottlenecks"] == [16, 32]
    assert methods.preset_config("unilead", "cpu")["routing"] == "softmax"


def test_unknown_preset_override_and_method_are_clear_errors():
    with pytest.raises(methods.MethodError, match="presets: cpu, paper"):
        methods.preset_config("uniad", "huge")
    with pytest.raises(methods.MethodError, match="no config key 'hiddn_dim'.*hidden_dim"):
        methods.preset_config("uniad", "cpu", {"hiddn_dim": 3})
    with pytest.raises(methods.MethodError, match="unknown method 'nope'; available: .*unilead"):
        methods.build("nope")


def test_a_method_module_that_fails_to_import_is_listed_as_unavailable(tmp_path, monkeypatch):
    (tmp_path / "broken_method_for_test.py").write_text("import a_module_that_does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(methods._KNOWN_MODULES, "broken", "broken_method_for_test")
    monkeypatch.setattr(methods, "_LOADED", False)
    monkeypatch.setattr(methods, "_IMPORT_ERRORS", {})
    assert "uniad" in methods.available()
    assert "broken" not in methods.available()
    assert "a_module_that_does_not_exist_anywhere" in methods.unavailable()["broken"]
    with pytest.raises(methods.MethodError, match="unavailable"):
        methods.build("broken")
    sys.modules.pop("broken_method_for_test", None)


def test_build_rejects_mismatched_feature_levels():
    model = methods.build("uniad", "cpu", feature_channels=[8, 16], feature_reductions=[8, 16])
    batch = {"features": [torch.randn(1, 8, 28, 28), torch.randn(1, 12, 14, 14)]}
    with pytest.raises(ValueError, match=r"channels \[8, 12\].*built for\s+\[8, 16\]"):
        model.training_step(batch)


def test_summarise_routing_gives_per_class_means():
    record = RoutingRecord(
        gate_mean=torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]], [[1.0, 0.0]]]),
        selection_freq=torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]], [[1.0, 0.0]]]),
        entropy=torch.tensor([[0.5], [0.3], [0.0]]),
        layer_names=["encoder.0"],
        expert_names=["adapter_d16", "adapter_d32"],
    )
    rows = summarise_routing([record], [["bottle", "bottle", "cable"]])
    by_key = {(r["class"], r["expert"]): r for r in rows}
    assert by_key[("bottle", "adapter_d16")]["gate_mean"] == pytest.approx(0.4)
    assert by_key[("bottle", "adapter_d32")]["selection_freq"] == pytest.approx(0.5)
    assert by_key[("bottle", "adapter_d16")]["entropy"] == pytest.approx(0.4)
    assert by_key[("cable", "adapter_d16")]["samples"] == 1
    assert summarise_routing_records([(record, ["bottle", "bottle", "cable"])]) == rows


def test_routing_record_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="shapes disagree"):
        RoutingRecord(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4), ["a", "b", "c"], list("wxyz"))
