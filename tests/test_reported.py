"""Every paper-reported file loads, and its entries name what the harness has (issue 9, item 7).

A reported value only ever appears beside a leaderboard row whose method and dataset match, so an
entry naming a method, dataset or metric the harness does not know would silently never show.
"""

from __future__ import annotations

import pytest

import methods
from harness.config import load_yaml
from harness.data.registry import dataset_names
from harness.metrics.table import STANDARD_METRICS, loco_metric_names
from harness.reported import REPORTED_DIR, load_reported, reported_for

FILES = sorted(REPORTED_DIR.glob("*.yaml"))
EFFICIENCY_METRICS = ("params_m", "flops_g")  # model sizes, shown by harness profile


def test_the_loader_reads_every_file_in_the_folder():
    names = {path.name for path in FILES}
    assert {"unilead_paper.yaml", "efficiency_unilead_paper.yaml", "anomalymoe_paper.yaml", "patchcore_official.yaml", "unimmad_paper.yaml"} <= names
    expected = sum(len(load_yaml(path)["entries"]) for path in FILES)
    assert len(load_reported()) == expected


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_names_registered_methods_known_datasets_and_metrics(path):
    data = load_yaml(path)
    assert isinstance(data.get("paper"), str) and data["paper"]
    assert data.get("unit") in ("percent", "absolute")
    values = load_reported(path.parent)
    entries = data["entries"]
    assert entries
    registered = set(methods.available())
    datasets = set(dataset_names()) | {"any"}
    metrics = set(STANDARD_METRICS) | set(loco_metric_names()) | set(EFFICIENCY_METRICS)
    for index, entry in enumerate(entries):
        where = f"{path.name} entries[{index}]"
        assert entry["method"] in registered, where
        assert entry["dataset"] in datasets, where
        assert entry["metric"] in metrics, where
        assert str(entry["source"]).strip(), where
        assert isinstance(entry["config"] or {}, dict), where
        schema = methods.get(entry["method"]).config_schema
        assert set(entry["config"] or {}) <= set(schema), f"{where}: config keys outside {entry['method']}'s schema"
        value = float(entry["value"])
        if data["unit"] == "percent":
            assert 0 < value <= 100, where
    assert values  # the folder loads as a whole


def test_baseline_cells_as_the_sources_give_them():
    def cell(method, dataset, config=None):
        found = reported_for(method, dataset, config or {})
        return {metric: round(100 * v.value, 2) for metric, v in found.items() if metric in ("i_auroc", "p_auroc")}

    # UniLEAD Table 1 (multi-class)
    assert cell("rd4ad", "mvtec_ad") == {"i_auroc": 94.6, "p_auroc": 96.1}
    assert cell("rd4ad", "visa") == {"i_auroc": 92.4, "p_auroc": 98.1}
    assert cell("rd4ad", "mvtec_loco") == {"i_auroc": 73.7, "p_auroc": 70.7}
    # AnomalyMoE Table 1 (one model over eight datasets)
    assert cell("dinomaly", "mvtec_ad") == {"i_auroc": 98.8, "p_auroc": 97.6}
    assert cell("dinomaly", "visa") == {"i_auroc": 95.7, "p_auroc": 96.4}
    assert cell("dinomaly", "mvtec_loco") == {"i_auroc": 78.2, "p_auroc": 71.5}
    assert cell("dinomaly", "mvtec_3d") == {"i_auroc": 86.5, "p_auroc": 98.7}
    # PatchCore's shipped results are one model per class: beside a per-class bank only
    per_class = methods.preset_config("patchcore", "paper", {"bank": "per_class"})
    assert cell("patchcore", "mvtec_ad", per_class) == {"i_auroc": 99.16, "p_auroc": 98.11}
    assert cell("patchcore", "mvtec_ad", methods.preset_config("patchcore", "paper")) == {}
    # nothing is reported for the embedded dataset
    for method in methods.available():
        assert cell(method, "embedded", methods.preset_config(method, "cpu")) == {}


def _percent(method, dataset, config):
    """metric -> (value in percent as printed, source) of what applies to this configuration."""
    return {metric: (round(100 * v.value, 3), v.source) for metric, v in reported_for(method, dataset, config).items()}


def test_unimmad_mvtec_3d_numbers_apply_to_rgb_and_depth_only():
    paper = methods.preset_config("unimmad", "paper")
    assert paper["modalities"] == ["rgb", "depth"]
    # Table 5's model trained on MVTec 3D-AD alone comes first; the unified model fills what Table 5 lacks
    assert _percent("unimmad", "mvtec_3d", paper) == {
        "i_auroc": (92.9, "UniMMAD Table 5 (Ours/Speci.)"),
        "p_auroc": (99.1, "UniMMAD Table 5 (Ours/Speci.)"),
        "p_f1max": (45.6, "UniMMAD Table 5 (Ours/Speci.)"),
        "i_f1max": (94.903, "UniMMAD Table 1"),
        "i_ap": (97.5, "UniMMAD Table 14 (Mean)"),
        "aupro": (95.9, "UniMMAD Table 15 (Mean)"),
    }
    unified = [v for v in load_reported() if v.method == "unimmad" and v.dataset == "mvtec_3d" and v.source in ("UniMMAD Table 1", "UniMMAD Table 2")]
    assert {v.metric: round(100 * v.value, 3) for v in unified} == {"i_auroc": 92.527, "i_f1max": 94.903, "p_auroc": 99.089, "p_f1max": 44.159}
    rgb_only = methods.preset_config("unimmad", "paper", {"modalities": ["rgb"]})
    assert _percent("unimmad", "mvtec_3d", rgb_only) == {}
    # lists compare in order: the paper's number is for the rgb, depth stack
    assert _percent("unimmad", "mvtec_3d", methods.preset_config("unimmad", "paper", {"modalities": ["depth", "rgb"]})) == {}
    assert _percent("unimmad", "mvtec_3d", methods.preset_config("unimmad", "paper", {"top_k": 1})) == {}


def test_unimmad_mvtec_ad_and_visa_numbers_apply_to_rgb_only():
    rgb_only = methods.preset_config("unimmad", "paper", {"modalities": ["rgb"]})
    mvtec_ad = _percent("unimmad", "mvtec_ad", rgb_only)
    assert {m: v for m, (v, _) in mvtec_ad.items()} == {"i_auroc": 99.4, "i_ap": 99.6, "i_f1max": 98.7, "p_auroc": 98.1, "p_f1max": 60.2, "aupro": 93.0}
    assert {source for _, source in mvtec_ad.values()} == {"UniMMAD Table 3"}
    visa = _percent("unimmad", "visa", rgb_only)
    assert {m: v for m, (v, _) in visa.items()} == {"i_auroc": 95.5, "i_ap": 96.2, "i_f1max": 92.4, "p_auroc": 98.9, "p_f1max": 47.2, "aupro": 91.3}
    assert _percent("unimmad", "mvtec_ad", methods.preset_config("unimmad", "paper")) == {}


ANOMALYMOE_TABLE_1 = {"mvtec_ad": (99.5, 97.7), "visa": (98.1, 99.0), "mvtec_loco": (87.5, 82.2), "mvtec_3d": (87.2, 98.9)}


@pytest.mark.parametrize("dataset", sorted(ANOMALYMOE_TABLE_1))
def test_anomalymoe_table_1_applies_to_the_paper_expert_configuration_only(dataset):
    i_auroc, p_auroc = ANOMALYMOE_TABLE_1[dataset]
    paper = methods.preset_config("anomalymoe", "paper")
    assert _percent("anomalymoe", dataset, paper) == {"i_auroc": (i_auroc, "AnomalyMoE Table 1"), "p_auroc": (p_auroc, "AnomalyMoE Table 1")}
    assert _percent("anomalymoe", dataset, methods.preset_config("anomalymoe", "cpu")) == {}  # 2+2+2 experts, top-2
    for override in ({"top_k": 2}, {"patch_experts": 4}, {"global_experts": 2}, {"component_experts": 5}):
        assert _percent("anomalymoe", dataset, methods.preset_config("anomalymoe", "paper", override)) == {}, override


def test_anomalymoe_ablations_apply_to_their_own_settings():
    def cell(dataset, **override):
        found = _percent("anomalymoe", dataset, methods.preset_config("anomalymoe", "paper", override))
        return found["i_auroc"][0], found["p_auroc"][0], found["i_auroc"][1]

    # Table 2: an absent expert level is 0 experts of that kind
    assert cell("mvtec_ad", global_experts=0, component_experts=0) == (98.2, 96.0, "AnomalyMoE Table 2 (patch only)")
    assert cell("mvtec_loco", global_experts=0) == (84.7, 79.4, "AnomalyMoE Table 2 (patch + component)")
    assert cell("mvtec_3d", component_experts=0) == (86.3, 97.3, "AnomalyMoE Table 2 (patch + global)")
    # Table 3: a module left out is its loss weight at 0
    assert cell("visa", esb_weight=0.0) == (97.3, 98.8, "AnomalyMoE Table 3 (w/o ESB)")
    assert cell("mvtec_loco", eir_weight=0.0) == (85.6, 92.0, "AnomalyMoE Table 3 (w/o EIR)")
    # no component-only or global-only model is reported
    assert _percent("anomalymoe", "mvtec_ad", methods.preset_config("anomalymoe", "paper", {"patch_experts": 0})) == {}
    # Dinomaly's reproduction (Table 1) is unaffected by the new entries
    assert _percent("dinomaly", "mvtec_3d", {}) == {"i_auroc": (86.5, "AnomalyMoE Table 1"), "p_auroc": (98.7, "AnomalyMoE Table 1")}
