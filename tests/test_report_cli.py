"""What a user types and reads: `harness leaderboard --sort` and the live sweep table at 80 columns."""

from __future__ import annotations

import csv
import io

import pytest
from rich.console import Console

from harness.cli import main
from harness.results import ResultStore, TrialResult

# routing mode -> (mean I-AUROC, mean P-AUROC): the two metrics rank the rows in opposite orders.
MEANS = {"softmax": (0.90, 0.70), "top1": (0.80, 0.95)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    results = ResultStore(tmp_path_factory.mktemp("report_cli") / "results")
    for mode, (i_auroc, p_auroc) in MEANS.items():
        config = {"method": "unilead", "dataset": "embedded", "seed": 0, "method_config": {"routing": mode}}
        run = {"run_id": f"run-{mode}", "sweep": "routing", "label": f"routing={mode}", "method": "unilead",
               "preset": "cpu", "dataset": "embedded", "seed": 0, "config_json": config, "axes_json": {}}
        metrics = [{"class_name": "mean", "metric": "i_auroc", "value": i_auroc},
                   {"class_name": "mean", "metric": "p_auroc", "value": p_auroc}]
        results.write_run(TrialResult(run, metrics), provenance=False)
    return results


def _ranked_configurations(store, capsys, *sort) -> list[str]:
    assert main(["leaderboard", str(store.root), "--format", "csv", *sort]) == 0
    rows = [row for row in csv.DictReader(io.StringIO(capsys.readouterr().out)) if row.get("rank")]
    return [row["configuration"] for row in sorted(rows, key=lambda row: int(row["rank"]))]


@pytest.mark.parametrize("spelling", ["P-AUROC", "p_auroc", "p-auroc", "P_AUROC"])
def test_sort_accepts_the_spellings_the_tables_show(store, capsys, spelling):
    assert _ranked_configurations(store, capsys, "--sort", spelling) == ["routing=top1", "routing=softmax"]


def test_sort_default_and_title_spelling_rank_by_i_auroc(store, capsys):
    by_default = _ranked_configurations(store, capsys)
    assert by_default == ["routing=softmax", "routing=top1"]
    assert _ranked_configurations(store, capsys, "--sort", "I-AUROC") == by_default


def test_sort_rejects_an_unknown_metric_naming_the_valid_ones(store, capsys):
    assert main(["leaderboard", str(store.root), "--sort", "foo"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    message = " ".join(captured.err.split())
    assert "--sort 'foo' is not a metric" in message
    for name in ("i_auroc", "p_auroc", "aupro"):
        assert name in message
