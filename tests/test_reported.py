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
    assert {"unilead_paper.yaml", "efficiency_unilead_paper.yaml", "anomalymoe_paper.yaml", "patchcore_official.yaml"} <= names
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
