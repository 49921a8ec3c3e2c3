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


@pytest.fixture(scope="module")
def two_dataset_store(tmp_path_factory):
    """Two methods on two datasets; the method ranked first differs between the datasets."""
    results = ResultStore(tmp_path_factory.mktemp("report_cli_datasets") / "results")
    for dataset, ranking in {"validation_a": ("uniad", "patchcore"), "validation_b": ("patchcore", "uniad")}.items():
        for method, i_auroc in zip(ranking, (0.9, 0.6)):
            config = {"method": method, "dataset": dataset, "seed": 0, "method_config": {}}
            run = {"run_id": f"run-{method}-{dataset}", "sweep": "presets", "method": method, "preset": "cpu",
                   "dataset": dataset, "seed": 0, "config_json": config, "axes_json": {}}
            results.write_run(TrialResult(run, [{"class_name": "mean", "metric": "i_auroc", "value": i_auroc}]),
                              provenance=False)
    return results


def test_cells_on_several_datasets_are_ranked_within_each_dataset(two_dataset_store, capsys):
    assert main(["leaderboard", str(two_dataset_store.root), "--format", "md", "--no-bootstrap"]) == 0
    text = capsys.readouterr().out
    first, second = text.split("on validation_b")
    assert "on validation_a" in first
    assert first.index("uniad") < first.index("patchcore") and second.index("patchcore") < second.index("uniad")


def test_dataset_option_keeps_one_dataset_and_names_the_others_when_absent(two_dataset_store, capsys):
    rows = _ranked_configurations(two_dataset_store, capsys, "--dataset", "validation_b", "--no-bootstrap")
    assert rows == ["method=patchcore", "method=uniad"]
    assert main(["leaderboard", str(two_dataset_store.root), "--dataset", "visa"]) == 1
    assert "datasets with runs: validation_a, validation_b" in capsys.readouterr().err


def test_html_of_several_datasets_writes_one_report_per_dataset(two_dataset_store, capsys, tmp_path):
    target = tmp_path / "board.html"
    assert main(["leaderboard", str(two_dataset_store.root), "--format", "html", "--output", str(target), "--no-bootstrap"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["board-validation_a.html", "board-validation_b.html"]
    assert "on validation_b" in (tmp_path / "board-validation_b.html").read_text()


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


# Labels as long as the experts sweep's, and the routing sweep's longest mode.
LIVE_LABELS = {
    "0123456789abcdef": "study=unimmad base_experts=4 leaders=2 top_k=2 modalities=rgb+depth seed=0",
    "fedcba9876543210": "routing=gumbel_top1 seed=2",
    "00112233aabbccdd": "routing=softmax seed=1",
}


class ManualClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trial(run_id: str):
    from ray.tune.experiment import Trial

    return Trial("__fake", config={"cell": {"run_id": run_id}}, stub=True)


def _text(view) -> str:
    view._console.print(view.render())
    return view._console.export_text(clear=True)


def _rows(text: str) -> list[tuple[str, str]]:
    """(trial, status) per body row of the rendered table; a row's wrapped lines joined."""
    body = text.split("╇")[-1].split("└")[0]
    rows = []
    for line in body.splitlines()[1:]:
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[1]:
            rows.append([cells[0], cells[1]])
        elif cells:
            rows[-1][0] += " " + cells[0]
    return [(trial.strip(), status) for trial, status in rows]


@pytest.fixture
def live_view():
    from harness.sweep.live_view import SweepLiveView

    clock = ManualClock()
    console = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    view = SweepLiveView(dict(LIVE_LABELS), console, clock=clock)
    yield view, clock
    view.close()


def test_live_table_at_80_columns_keeps_trial_names_and_statuses_whole(live_view):
    view, clock = live_view
    long_id, gumbel_id, softmax_id = LIVE_LABELS
    view.on_trial_start(0, [], _trial(gumbel_id))
    view.on_trial_result(0, [], _trial(gumbel_id), {"epoch": 3, "epochs": 20, "train_loss": 0.123456})
    view.on_trial_result(0, [], _trial(softmax_id), {"status": "complete", "mean_i_auroc": 0.9297})
    view.on_trial_error(0, [], _trial(long_id))
    clock.now += 75
    text = _text(view)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert _rows(text) == [(LIVE_LABELS[long_id], "failed"), (LIVE_LABELS[gumbel_id], "running"),
                           (LIVE_LABELS[softmax_id], "complete")]
    assert "I-AUROC" in text and "3/20" in text and "0.1235" in text and "92.97" in text
    assert "the trial process died" in " ".join(text.split())


def test_live_table_shows_run_ids_when_there_is_room():
    from harness.sweep.live_view import SweepLiveView

    wide = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    view = SweepLiveView(dict(LIVE_LABELS), wide)
    try:
        text = _text(view)
    finally:
        view.close()
    assert all(run_id in text for run_id in LIVE_LABELS)


def test_live_table_eta_follows_the_finished_fraction(live_view):
    view, clock = live_view
    long_id, gumbel_id, softmax_id = LIVE_LABELS
    assert "ETA after the first epoch" in _text(view)
    view.on_trial_result(0, [], _trial(softmax_id), {"status": "complete"})
    view.on_trial_result(0, [], _trial(gumbel_id), {"epoch": 5, "epochs": 10})
    clock.now += 90  # 1.5 of 3 trials in 90 s: another 90 s to go
    assert "(1 min 30 s, ETA 1 min 30 s)" in _text(view)
    view.on_trial_result(0, [], _trial(gumbel_id), {"status": "complete"})
    view.on_trial_result(0, [], _trial(long_id), {"status": "failed", "reason": "TrainingDiverged"})
    assert "done" in _text(view)


def test_live_view_pickles_without_its_display(live_view):
    import pickle

    view, _ = live_view
    copy = pickle.loads(pickle.dumps(view))  # Tune stores its callbacks in the experiment state
    assert copy.state == view.state and copy.labels == view.labels


def test_the_dataset_spinner_says_a_generated_dataset_may_be_built(tmp_path, monkeypatch):
    from harness.training.progress import dataset_step_text

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert dataset_step_text("embedded", None).startswith(f"preparing dataset embedded: generating it under {tmp_path.resolve()}")
    assert dataset_step_text("mvtec_ad", "/data/mvtec") == "checking dataset mvtec_ad at /data/mvtec"
    assert dataset_step_text("embedded", "/data/copy") == "checking dataset embedded at /data/copy"
