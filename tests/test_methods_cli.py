"""`harness methods`: every registered method with its presets, version, input kind, training and
modalities, read from the method classes themselves; the text view fits 80 columns."""

from __future__ import annotations

import json

import methods
from harness.cli import main


def _listing(capsys, *options) -> str:
    assert main(["methods", *options]) == 0
    return capsys.readouterr().out


def test_json_lists_every_method_as_its_class_declares_it(capsys):
    listed = {row["method"]: row for row in json.loads(_listing(capsys, "--json"))["methods"]}
    assert sorted(listed) == methods.available()
    for name, row in listed.items():
        cls = methods.get(name)
        assert row["version"] == cls.version and row["input_kind"] == cls.input_kind
        assert row["training"] == ("fitted" if cls.fitted else "trained")
        assert sorted(row["presets"]) == sorted(cls.presets)
        for preset, config in row["presets"].items():
            assert config["backbone"] == cls.presets[preset]["backbone"]
            assert config["image_size"] == cls.presets[preset]["image_size"]


def test_json_names_what_each_kind_of_method_reads(capsys):
    listed = {row["method"]: row for row in json.loads(_listing(capsys, "--json"))["methods"]}
    assert listed["patchcore"]["training"] == "fitted" and listed["patchcore"]["presets"]["cpu"]["epochs"] is None
    assert listed["unimmad"]["modalities"] == ["rgb", "depth"]
    assert listed["unimmad"]["presets"]["paper"]["backbone_role"] == "the method's own encoder"
    assert listed["uniad"]["presets"]["paper"]["backbone"] == "tf_efficientnet_b4.aa_in1k"
    assert listed["uniad"]["presets"]["cpu"]["backbone_role"] == "frozen features"
    assert listed["anomalymoe"]["class_normalised"] is True


def test_text_view_names_every_preset_within_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = _listing(capsys)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in methods.available():
        assert any(line.startswith(f"{name} v{methods.get(name).version}") for line in lines), name
    assert "images rgb+depth (its own encoder), trained" in text
    assert "vit_base_patch14_reg4_dinov2.lvd142m" in text and "one pass" in text
