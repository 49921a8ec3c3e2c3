"""`harness train --results` writes a run a sweep would name the same, and `harness predict` scores
images with it: the run's own test images give its stored scores and maps bit for bit."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harness.cli import main
from harness.results import read_maps
from harness.results.store import ResultStore

EPOCHS_AND_BATCH = ["--set", "epochs=1", "--set", "batch_size=4"]  # 10 test images: batches of 4, 4 and 2


@pytest.fixture(scope="module")
def trained(fixture_root, tmp_path_factory):
    """One uniad cpu run on the generic fixture, written into a result store by `harness train --results`."""
    folder = tmp_path_factory.mktemp("trained")
    store = folder / "store"
    status = main(["train", "--method", "uniad", "--dataset", "generic", "--data-root", str(fixture_root),
                   *EPOCHS_AND_BATCH, "--results", str(store), "--output", str(folder / "run"), "--json"])
    assert status == 0
    (run_id,) = ResultStore(store).completed_run_ids()
    return {"root": fixture_root, "store": store, "run_id": run_id}


def test_train_json_is_in_percent_like_every_view(fixture_root, tmp_path, capsys):
    import json

    assert main(["train", "--method", "uniad", "--dataset", "generic", "--data-root", str(fixture_root),
                 *EPOCHS_AND_BATCH, "--results", str(tmp_path / "store"), "--output", str(tmp_path / "run"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = {m["metric"]: m["value"] for m in ResultStore(tmp_path / "store").read("metrics").to_pylist() if m["class_name"] == "mean"}
    assert printed["mean"]["i_auroc"] == pytest.approx(100 * stored["i_auroc"])  # the store keeps fractions
    assert printed["mean"]["p_auroc"] == pytest.approx(100 * stored["p_auroc"]) and printed["mean"]["p_auroc"] > 1


def test_train_results_names_the_run_as_a_sweep_would(trained):
    from harness.sweep.run_id import resolve_run_ids
    from harness.sweep.spec import parse_sweep

    spec = parse_sweep({"name": "one", "base": {"method": "uniad", "dataset": "generic", "data_root": str(trained["root"]),
                                                "method_config": {"epochs": 1, "batch_size": 4}}})
    trials = spec.trials()
    resolve_run_ids(trials)
    assert trials[0].run_id == trained["run_id"]
    store = ResultStore(trained["store"])
    assert store.checkpoint_path(trained["run_id"]).is_file()
    assert store.read("metrics", [trained["run_id"]]).num_rows > 0


def _predict(trained, output, *images, extra=()):
    return main(["predict", "--run", trained["run_id"], "--results", str(trained["store"]), "--output", str(output),
                 *extra, *map(str, images)])


def _store_with_run_value(trained, tmp_path, column: str, value):
    """A copy of the trained store whose runs row holds ``value`` in ``column``."""
    store = tmp_path / "store"
    shutil.copytree(trained["store"], store)
    runs_file = store / "runs" / f"{trained['run_id']}.parquet"
    table = pq.read_table(runs_file)
    index = table.schema.get_field_index(column)
    field = table.schema.field(index)
    pq.write_table(table.set_column(index, field, pa.array([value], field.type)), runs_file)
    return store


def _csv_rows(output) -> list[dict]:
    with open(output / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_on_the_runs_test_images_reproduces_its_stored_scores_and_maps_exactly(trained, tmp_path):
    root = trained["root"]
    assert _predict(trained, tmp_path, root / "gear" / "test", root / "widget" / "test") == 0
    rows = _csv_rows(tmp_path)
    store = ResultStore(trained["store"])
    stored = {row["sample_id"]: row["score"] for row in store.read("sample_scores", [trained["run_id"]]).to_pylist()}
    assert sorted(row["sample_id"] for row in rows) == sorted(stored)
    assert {row["sample_id"]: float(row["score"]) for row in rows} == stored  # bit for bit, not approximately
    maps = read_maps(store, trained["run_id"])
    for row in rows:
        predicted = np.load(tmp_path / row["map_npy"])
        assert predicted.dtype == np.float16 and np.array_equal(predicted, maps[row["sample_id"]]), row["sample_id"]



def test_an_image_method_with_component_masks_and_class_normalised_maps_is_reproduced_exactly(fixture_root, tmp_path):
    """AnomalyMoE: the loop's image pipeline, the offline component masks and the per-class finish()."""
    store = tmp_path / "store"
    assert main(["train", "--method", "anomalymoe", "--dataset", "generic", "--data-root", str(fixture_root),
                 *EPOCHS_AND_BATCH, "--results", str(store), "--output", str(tmp_path / "run"), "--json"]) == 0
    (run_id,) = ResultStore(store).completed_run_ids()
    run = {"run_id": run_id, "store": store}
    assert _predict(run, tmp_path / "out", fixture_root / "gear" / "test", fixture_root / "widget" / "test") == 0
    rows = _csv_rows(tmp_path / "out")
    stored = {row["sample_id"]: row["score"] for row in ResultStore(store).read("sample_scores", [run_id]).to_pylist()}
    assert {row["sample_id"]: float(row["score"]) for row in rows} == stored
    maps = read_maps(store, run_id)
    assert all(np.array_equal(np.load(tmp_path / "out" / row["map_npy"]), maps[row["sample_id"]]) for row in rows)

def test_predict_writes_a_heat_map_and_an_overlay_at_the_map_size(trained, tmp_path):
    image = trained["root"] / "gear" / "test" / "good" / "000.png"
    assert image.exists()
    assert _predict(trained, tmp_path, image, extra=["--maps", "png"]) == 0
    (row,) = _csv_rows(tmp_path)
    assert row["class_name"] == "gear" and row["label"] == "0" and "map_npy" not in row
    heat, over = Image.open(tmp_path / row["heat_png"]), Image.open(tmp_path / row["overlay_png"])
    maps = read_maps(trained["store"], trained["run_id"])
    assert heat.size == over.size == maps[row["sample_id"]].shape[::-1]
    assert heat.mode == over.mode == "RGB"


def test_a_new_image_takes_its_class_from_the_option_and_scores_like_its_copy_in_the_dataset(trained, tmp_path):
    source = trained["root"] / "widget" / "test" / "scratch" / "000.png"
    copy = tmp_path / "incoming" / "part.png"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    assert _predict(trained, tmp_path / "new", copy, extra=["--class", "widget"]) == 0
    assert _predict(trained, tmp_path / "known", source) == 0
    (new,), (known,) = _csv_rows(tmp_path / "new"), _csv_rows(tmp_path / "known")
    assert (new["sample_id"], new["class_name"], new["label"]) == ("part", "widget", "")
    assert known["sample_id"] == "widget/test/scratch/000"
    assert float(new["score"]) == float(known["score"])  # the same pixels in the same one-image batch


def test_an_image_of_unknown_class_asks_for_class(trained, tmp_path, capsys):
    copy = tmp_path / "part.png"
    shutil.copy(trained["root"] / "widget" / "test" / "good" / "000.png", copy)
    assert _predict(trained, tmp_path / "out", copy) == 2
    error = capsys.readouterr().err
    assert "--class NAME" in error and "gear, widget" in error and "Traceback" not in error


def test_an_unknown_run_is_one_message_and_exit_2(trained, tmp_path, capsys):
    status = main(["predict", "--run", "0000000000000000", "--results", str(trained["store"]), str(trained["root"])])
    error = capsys.readouterr().err
    assert status == 2
    assert "no such run" in error and trained["run_id"] in error and "Traceback" not in error


def test_a_run_without_its_checkpoint_is_one_message_and_exit_2(trained, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(trained["store"], store)
    ResultStore(store).checkpoint_path(trained["run_id"]).unlink()
    status = main(["predict", "--run", trained["run_id"], "--results", str(store), str(trained["root"] / "gear" / "test")])
    error = capsys.readouterr().err
    assert status == 2 and "no final checkpoint" in error and "Traceback" not in error


def test_an_unreadable_image_is_one_message_naming_it_and_exit_2(trained, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes((trained["root"] / "gear" / "test" / "good" / "000.png").read_bytes()[:60])
    assert _predict(trained, tmp_path / "out", broken, extra=["--class", "gear"]) == 2
    error = capsys.readouterr().err
    assert "broken.png" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_other_backbone_weights_than_the_runs_are_refused(trained, tmp_path, capsys):
    store = _store_with_run_value(trained, tmp_path, "backbone_weights_sha256", "0" * 64)
    status = main(["predict", "--run", trained["run_id"], "--results", str(store), str(trained["root"] / "gear" / "test")])
    error = capsys.readouterr().err
    assert status == 2 and "weights id 0000000000000000" in error and "Traceback" not in error


# ------------------------------------------------------------------- checkpoint retention in the store


def test_sweep_checkpoint_retention_is_last_by_default_and_checked():
    from harness.sweep.spec import SweepError, parse_sweep

    base = {"name": "s", "base": {"method": "uniad"}}
    assert parse_sweep(base).checkpoints == "last"
    assert parse_sweep({**base, "checkpoints": "none"}).checkpoints == "none"
    with pytest.raises(SweepError, match="checkpoints"):
        parse_sweep({**base, "checkpoints": "best"})


def test_a_kept_checkpoint_holds_only_the_model_and_goes_with_its_run(trained, tmp_path):
    import torch

    store = ResultStore(tmp_path / "store")
    source = ResultStore(trained["store"]).checkpoint_path(trained["run_id"])
    store.write_checkpoint("orphan", source)
    kept = torch.load(store.checkpoint_path("orphan"), weights_only=True)
    assert set(kept) == {"model", "epoch"} and kept["model"]
    assert store.checkpoint_path("orphan") in store.remove_orphans()  # no runs row: removed like other orphans
    store.write_checkpoint("failed", source)
    store.write_failure("failed", {"method": "uniad"}, "boom")
    assert not store.checkpoint_path("failed").exists()


def test_predict_scores_with_the_runs_own_thread_count(trained, tmp_path):
    """CPU kernels round differently for another thread count (2.3e-5 on uniad's scores, measured)."""
    import torch

    store = _store_with_run_value(trained, tmp_path, "torch_threads", 2)
    try:
        status = main(["predict", "--run", trained["run_id"], "--results", str(store), "--output", str(tmp_path / "out"),
                       str(trained["root"] / "gear" / "test" / "good" / "000.png")])
        assert status == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_a_sweep_trial_keeps_its_final_model_and_predict_reproduces_the_trial(fixture_root, tmp_path):
    """`harness sweep` (its own local Ray, in a subprocess) with the default `checkpoints: last`."""
    import os
    import subprocess
    import sys

    import yaml

    from ray_sweeps import private_ray_environ

    results = tmp_path / "results"
    sweep = {"name": "kept", "results": str(results), "seeds": [0],
             "base": {"method": "uniad", "dataset": "generic", "data_root": str(fixture_root),
                      "method_config": {"epochs": 1, "batch_size": 4}}}
    path = tmp_path / "kept.yaml"
    path.write_text(yaml.safe_dump(sweep))
    env = {key: value for key, value in {**os.environ, **private_ray_environ()}.items() if value is not None}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(path)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (run_id,) = ResultStore(results).completed_run_ids()
    assert ResultStore(results).checkpoint_path(run_id).is_file()
    trained = {"run_id": run_id, "store": results}
    assert _predict(trained, tmp_path / "out", fixture_root / "gear" / "test", fixture_root / "widget" / "test") == 0
    stored = {row["sample_id"]: row["score"] for row in ResultStore(results).read("sample_scores", [run_id]).to_pylist()}
    assert {row["sample_id"]: float(row["score"]) for row in _csv_rows(tmp_path / "out")} == stored
