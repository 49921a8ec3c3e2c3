"""Dataset options (Real-IAD's views, json_dir, image_dir) end to end: `harness train --dataset-option`,
a sweep's ``dataset_options`` and its dotted axes, run ids, predict, `harness datasets verify --option`
and `harness datasets fixture real_iad`, on the tiny Real-IAD fixture."""

from __future__ import annotations

import csv
import json

import pytest

from harness.cli import main
from harness.config import ConfigError
from harness.data import DatasetError, load_dataset
from harness.data.fixtures import REAL_IAD_CLASSES, REAL_IAD_OBJECTS, write_real_iad_fixture
from harness.data.verify import check_trial_dataset
from harness.identity import trial_run_id
from harness.results.store import ResultStore
from harness.sweep.run_id import method_version, resolve_run_ids
from harness.sweep.spec import SweepError, parse_sweep

CLASSES = list(REAL_IAD_CLASSES)
SMALL = {"image_size": 64, "eval_size": 64, "backbone_weights": "random"}
SMALL_SETS = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
TEST_OBJECTS = sum(1 for split, _ in REAL_IAD_OBJECTS if split == "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_real_iad_fixture(tmp_path_factory.mktemp("options") / "Real-IAD").root


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    """PatchCore (cpu preset, 64 px, random weights) on view C1 only, written by `harness train --results`."""
    folder = tmp_path_factory.mktemp("trained")
    status = main(["train", "--method", "patchcore", "--dataset", "real_iad", "--data-root", str(root), "--classes", ",".join(CLASSES),
                   "--dataset-option", "views=C1", *SMALL_SETS, "--results", str(folder / "store"), "--output", str(folder / "run"), "--json"])
    assert status == 0
    (run_id,) = ResultStore(folder / "store").completed_run_ids()
    return {"store": ResultStore(folder / "store"), "run_id": run_id}


def sweep(root, **base) -> dict:
    return {"name": "views", "base": {"method": "patchcore", "dataset": "real_iad", "data_root": str(root), "classes": CLASSES,
                                      "method_config": dict(SMALL), **base}}


def resolved_trials(data: dict) -> list:
    trials = parse_sweep(data, source="s.yaml").trials()
    resolve_run_ids(trials)
    return trials


def test_train_records_the_option_and_scores_one_view_per_object(trained):
    store, run_id = trained["store"], trained["run_id"]
    (run,) = store.runs().to_pylist()
    assert json.loads(run["config_json"])["dataset_options"] == {"views": ["C1"]}
    rows = store.read("sample_scores", [run_id]).to_pylist()
    assert len(rows) == TEST_OBJECTS * len(CLASSES)  # one test image per object, not five
    assert all("_C1_" in row["sample_id"] and row["view"] == "C1" for row in rows)


def test_train_names_the_bad_option_by_its_flag(root, capsys):
    status = main(["train", "--method", "patchcore", "--dataset", "real_iad", "--data-root", str(root),
                   "--dataset-option", "views=C1,C7", "--dataset-option", "view=C1"])
    error = capsys.readouterr().err
    assert status == 2
    assert "--dataset-option views: got 'C1,C7'" in error and "option 'views' has 'C7'" in error
    assert "--dataset-option view: got 'C1'" in error and "unknown option(s) 'view'" in error
    status = main(["train", "--method", "patchcore", "--dataset", "mvtec_ad", "--data-root", str(root), "--dataset-option", "views=C1"])
    assert status == 2 and "dataset mvtec_ad takes no dataset options" in capsys.readouterr().err


def test_a_sweep_names_the_same_run_as_train_with_another_spelling_of_the_views(root, trained):
    (trial,) = resolved_trials(sweep(root, dataset_options={"views": ["C1", "C1"]}))
    assert trial.config["dataset_options"] == {"views": ["C1"]}
    assert trial.run_id == trained["run_id"]


def test_run_ids_differ_by_options_and_stay_as_before_without_them(root):
    plain, empty = resolved_trials(sweep(root))[0], resolved_trials(sweep(root, dataset_options={}))[0]
    assert "dataset_options" not in plain.config and "dataset_options" not in empty.config
    before = trial_run_id(plain.config, method_version("patchcore"), load_dataset("real_iad", root, classes=CLASSES).fingerprint())
    assert plain.run_id == empty.run_id == before
    axis = {"dataset_options.views": {"grid": [["C1"], ["C1", "C2", "C3", "C4", "C5"], "C2"]}}
    by_views = {tuple(t.config["dataset_options"]["views"]): t.run_id for t in resolved_trials({**sweep(root), "axes": axis})}
    assert set(by_views) == {("C1",), ("C1", "C2", "C3", "C4", "C5"), ("C2",)}
    assert len(set(by_views.values()) | {before}) == 4


def test_a_bad_view_in_a_sweep_is_named_by_its_key(root, tmp_path, capsys):
    with pytest.raises(SweepError) as caught:
        parse_sweep(sweep(root, dataset_options={"views": ["C6"]}), source="s.yaml")
    assert isinstance(caught.value, ConfigError)
    assert [issue.key for issue in caught.value.issues] == ["base.dataset_options.views"]
    assert "option 'views' has 'C6'" in str(caught.value)
    with pytest.raises(SweepError) as caught:
        parse_sweep({**sweep(root), "axes": {"dataset_options.json_dir": {"grid": ["realiad_jsons", "realiad_json"]}}}, source="s.yaml")
    assert [issue.key for issue in caught.value.issues] == ["axes.dataset_options.json_dir"]
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(sweep(root)))
    assert main(["sweep", str(path), "--dry-run", "--dataset-option", "views=C9"]) == 2
    assert "base.dataset_options.views: got 'C9'" in capsys.readouterr().err


def test_predict_reads_the_run_dataset_with_its_options(root, trained, tmp_path, capsys):
    folder = root / "realiad_1024" / "audiojack"
    status = main(["predict", "--run", trained["run_id"], "--results", str(trained["store"].root), "--output", str(tmp_path / "p"),
                   "--maps", "npy", str(folder)])
    assert status == 0
    images = len(list(folder.rglob("*.jpg")))
    c1_images = len(list(folder.rglob("*_C1_*.jpg")))
    assert f"scored {images} images ({c1_images} of them samples of the run's dataset)" in capsys.readouterr().err
    stored = {r["sample_id"]: r["score"] for r in trained["store"].read("sample_scores", [trained["run_id"]]).to_pylist()}
    with open(tmp_path / "p" / "scores.csv") as handle:
        scored = {r["sample_id"]: float(r["score"]) for r in csv.DictReader(handle) if r["sample_id"] in stored}
    assert scored and all(scored[key] == pytest.approx(stored[key], rel=1e-6) for key in scored)


def test_verify_option_reads_the_chosen_views(root, capsys):
    assert main(["datasets", "verify", str(root), "--dataset", "real_iad", "--classes", ",".join(CLASSES), "--option", "views=C2"]) == 0
    out = capsys.readouterr().out
    assert f"{len(REAL_IAD_OBJECTS) * len(CLASSES)} samples" in out
    assert main(["datasets", "verify", str(root), "--dataset", "real_iad", "--option", "json_dir=nope"]) == 1
    assert "option 'json_dir' is 'nope'" in capsys.readouterr().out


def test_an_empty_split_names_the_json_split_file(tmp_path):
    info = write_real_iad_fixture(tmp_path / "Real-IAD")
    split_file = info.root / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    document = json.loads(split_file.read_text())
    document["train"] = [e for e in document["train"] if "_C1_" not in e["image_path"]]
    split_file.write_text(json.dumps(document))
    with pytest.raises(DatasetError) as caught:
        check_trial_dataset("real_iad", info.root, classes=CLASSES, options={"views": ["C1"]})
    (problem,) = caught.value.problems
    assert problem.kind == "empty-split" and problem.path == str(split_file)
    assert f"class 'audiojack' has no train images (the 'train' list of the split file {split_file} names no image of the views C1)" \
        in str(caught.value)
    check_trial_dataset("real_iad", info.root, classes=CLASSES, options={"views": ["C2"]})


def test_fixture_command_writes_real_iad(tmp_path, capsys):
    assert main(["datasets", "fixture", "real_iad", str(tmp_path / "r")]) == 0
    assert f"--dataset real_iad --expect {tmp_path / 'r' / 'expected_card.yaml'}" in capsys.readouterr().out
    assert main(["datasets", "verify", str(tmp_path / "r"), "--dataset", "real_iad", "--expect", str(tmp_path / "r" / "expected_card.yaml")]) == 0
    assert main(["datasets", "fixture", "real_iad", str(tmp_path / "v"), "--variant", "missing_mask"]) == 2
    assert "the real_iad fixture plants no problems" in capsys.readouterr().err
