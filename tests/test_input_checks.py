"""Inputs checked before work starts: datasets before training, 16-bit images scaled, unreadable
files named, and every user error one message with exit code 2 (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import methods
from harness.cli import main
from harness.data.fixtures import write_fixture
from harness.data.images import ImageReadError, read_rgb
from harness.data.registry import DatasetError
from harness.data.verify import check_trial_dataset, verify_dataset

REPO = Path(__file__).resolve().parent.parent
LEVELS = np.array([0, 1, 128, 200, 255], dtype=np.uint16)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def sixteen_bit_gray() -> np.ndarray:
    """A 5 x 4 16-bit image whose rows hold 257 * k: it must read back as k."""
    return np.repeat((LEVELS * 257)[:, None], 4, axis=1)


# ------------------------------------------------------------------ 16-bit images


def test_sixteen_bit_png_reads_scaled_not_saturated(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(sixteen_bit_gray()).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 4, 3)
    assert rgb[:, 0, 0].tolist() == LEVELS.tolist()
    assert (rgb == rgb[..., :1]).all()


def test_sixteen_bit_tiffs_read_scaled(tmp_path):
    gray, colour = tmp_path / "g16.tiff", tmp_path / "rgb16.tiff"
    tifffile.imwrite(gray, sixteen_bit_gray())
    tifffile.imwrite(colour, np.stack([sixteen_bit_gray()] * 3, axis=-1))
    for path in (gray, colour):
        assert read_rgb(path)[:, 0, 0].tolist() == LEVELS.tolist()


def test_verify_reads_a_sixteen_bit_dataset_as_training_does(tmp_path):
    info = write_fixture("generic", tmp_path / "g")
    image = info.root / "widget" / "train" / "good" / "000.png"
    Image.fromarray((np.asarray(Image.open(image).convert("L")).astype(np.uint16) * 257)).save(image)
    assert verify_dataset("generic", info.root).ok
    check_trial_dataset("generic", info.root)


# ------------------------------------------------------------------ datasets checked before training


def test_truncated_png_is_named_by_the_check_and_by_feature_reading(tmp_path):
    info = write_fixture("generic", tmp_path / "g")
    broken = info.root / "gear" / "test" / "dent" / "001.png"
    truncate(broken)
    with pytest.raises(DatasetError, match=f"{broken}: cannot be decoded"):
        check_trial_dataset("generic", info.root)
    with pytest.raises(ImageReadError, match=str(broken)):
        read_rgb(broken, size=16)  # what feature extraction calls for every image


def test_mask_of_the_wrong_size_is_rejected_before_training(tmp_path):
    info = write_fixture("mvtec_ad", tmp_path / "ad")
    mask = info.root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    with pytest.raises(DatasetError, match=f"{mask}: 16x16 mask for a 32x32 image"):
        check_trial_dataset("mvtec_ad", info.root, expected=info.counts)


def test_empty_train_good_is_rejected_before_training(tmp_path):
    info = write_fixture("generic", tmp_path / "g")
    for image in (info.root / "widget" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError) as caught:
        check_trial_dataset("generic", info.root)
    assert [p.kind for p in caught.value.problems] == ["empty-split"]
    assert "class 'widget' has no train images" in str(caught.value)


def test_harness_train_names_a_truncated_image_and_exits_2_without_a_traceback(tmp_path):
    info = write_fixture("generic", tmp_path / "g")
    broken = info.root / "widget" / "train" / "good" / "002.png"
    truncate(broken)
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "train", "--method", "uniad", "--dataset", "generic", "--data-root", str(info.root)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(broken) in done.stderr
    assert "found before training" in done.stderr


# ------------------------------------------------------------------ user errors: one message, exit 2


def _sweep_file(tmp_path: Path, base: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: t\nbase: {base}\n")
    return str(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "nosuch"], "--method: got 'nosuch'; expected one of "),  # the registered names follow
        (["train", "--method", "uniad", "--preset", "fast"], "--preset: got 'fast'; expected one of uniad's presets: cpu, paper"),
        (["train", "--method", "uniad", "--set", "epohcs=3"], "--set epohcs: got 'epohcs'; expected an option of uniad's cpu preset"),
        (["train", "--method", "uniad", "--set", "epochs=-1"], "--set epochs: got -1; expected an integer >= 1"),
        (["train", "--method", "uniad", "--classes", "nosuch"], "--classes: got 'nosuch'; expected a class of dataset embedded: brick,"),
        (["train", "--method", "uniad", "--dataset", "nosuch"], "--dataset: got 'nosuch'; expected one of embedded,"),
        (["train", "--method", "uniad", "--dataset", "visa", "--data-root", "/no/such/dir"], "--data-root: got '/no/such/dir'; expected an existing folder"),
        (["train", "--method", "uniad", "--expect", "/no/card.yaml"], "--expect: got '/no/card.yaml'; expected an existing dataset card file"),
        (["profile", "--method", "nosuch"], "--method: got 'nosuch'"),
        (["profile", "--method", "unilead", "--preset", "fast"], "--preset: got 'fast'"),
        (["profile", "--method", "unilead", "--set", "routing=sparse_top2"], "--set routing: got 'sparse_top2'; expected one of softmax, gumbel_top1, top1, first"),
        (["profile", "--method", "unilead", "--bottlenecks", "16,x"], "--bottlenecks expects comma-separated integers"),
        (["sweep", "/no/such/sweep.yaml", "--dry-run"], "/no/such/sweep.yaml: no such file"),
    ],
)
def test_user_errors_are_one_message_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if argv[1:3] == ["--method", "nosuch"]:
        assert ", ".join(methods.available()) in err


@pytest.mark.parametrize(
    "base, extra, message",
    [
        ("{method: nosuch}", [], "base.method: got 'nosuch'"),
        ("{method: uniad, preset: fast}", [], "base.preset: got 'fast'"),
        ("{method: uniad}", ["--set", "epohcs=3"], "base.method_config.epohcs: got 'epohcs'"),
        ("{method: uniad}", ["--classes", "nosuch"], "base.classes: got 'nosuch'"),
        ("{method: uniad}", ["--dataset", "nosuch"], "base.dataset: got 'nosuch'"),
        ("{method: uniad, method_config: {epochs: 0}}", [], "base.method_config.epochs: got 0; expected an integer >= 1"),
    ],
)
def test_sweep_dry_run_user_errors_exit_2(tmp_path, base, extra, message, capsys):
    assert main(["sweep", _sweep_file(tmp_path, base), "--dry-run", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_real_sweep_checks_its_dataset_before_ray_starts(tmp_path, capsys, monkeypatch):
    info = write_fixture("generic", tmp_path / "g")
    truncate(info.root / "gear" / "train" / "good" / "000.png")
    import harness.sweep.runner as runner

    monkeypatch.setattr(runner, "run_sweep", lambda spec, args: pytest.fail("the sweep started despite a broken dataset"))
    sweep = _sweep_file(tmp_path, "{method: uniad, dataset: generic}")
    assert main(["sweep", sweep, "--data-root", str(info.root), "--results", str(tmp_path / "r")]) == 2
    assert "gear/train/good/000.png: cannot be decoded" in capsys.readouterr().err
