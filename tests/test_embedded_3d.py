"""The embedded multi-modal dataset: deterministic, MVTec 3D-AD layout read by the mvtec_3d loader,
counts as on its card, defects that show in depth only, colour only or both, with exact masks."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from harness.cli import main
from harness.data import load_dataset
from harness.data.depth import depth_tensor
from harness.data.embedded import manifest
from harness.data.embedded_3d import (
    CLASSES,
    DEFECT_SHOWS_IN,
    DEFECTS,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    save_xyz,
    anomalous_scan,
    class_counts,
    default_root,
    prepare_embedded_3d,
    write_class,
)
from harness.data.images import read_xyz, valid_points
from harness.training.trial_config import dataset_issues

CARD = Path(__file__).resolve().parents[1] / "datasets" / "embedded_3d.yaml"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    started = time.perf_counter()
    root = prepare_embedded_3d(seed=0, root=tmp_path_factory.mktemp("cache") / "seed0")
    print(f"\nembedded_3d generated in {time.perf_counter() - started:.1f} s")
    return root


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_gives_the_same_bytes_and_another_seed_other_scans(generated, tmp_path):
    again = prepare_embedded_3d(seed=0, root=tmp_path / "again")
    assert manifest(again) == manifest(generated)
    write_class(tmp_path / "seed1", 1, 0)
    other = {k: v for k, v in manifest(tmp_path / "seed1").items() if "/gt/" not in k}
    cookie = {k: v for k, v in manifest(generated).items() if k.startswith("cookie/") and "/gt/" not in k}
    assert other.keys() == cookie.keys()
    assert not set(other.items()) & set(cookie.items())


def test_the_card_lists_what_is_written(generated):
    card = yaml.safe_load(CARD.read_text())
    assert card["name"] == "embedded_3d" and card["layout"] == "mvtec_3d" and card["modalities"] == ["rgb", "xyz"]
    assert card["generator"]["version"] == GENERATOR_VERSION and card["counts_verified"] is True
    assert list(card["classes"]) == [r.name for r in CLASSES]
    for recipe in CLASSES:
        entry = card["classes"][recipe.name]
        assert entry["counts"] == class_counts() and entry["source"] == recipe.source
        for split, per_type in entry["counts"].items():
            for defect, count in per_type.items():
                folder = generated / recipe.name / split / defect
                assert len(list((folder / "rgb").glob("*.png"))) == len(list((folder / "xyz").glob("*.tiff"))) == count
                assert len(list((folder / "gt").glob("*.png"))) == (count if split == "test" else 0)


def test_load_dataset_builds_it_on_first_use_and_needs_no_root(generated, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert dataset_issues("embedded_3d", None, None, None) == []
    assert [i.key for i in dataset_issues("mvtec_3d", None, None, None)] == ["data_root"]
    index = load_dataset("embedded_3d")
    assert index.root == default_root(0) == tmp_path / "embedded_3d" / f"v{GENERATOR_VERSION}-seed0"
    assert manifest(index.root) == manifest(generated)
    assert index.counts() == {r.name: class_counts() for r in CLASSES} and not index.warnings
    assert all(set(s.images) == {"rgb", "xyz"} for s in index.samples)
    anomalous = [s for s in index.samples if s.is_anomalous]
    assert len(anomalous) == len(CLASSES) * len(DEFECTS) * class_counts()["test"]["dent"]
    assert all(len(s.masks) == 1 and s.masks[0].parent.name == "gt" for s in anomalous)


def test_prepare_command_prints_the_counts(generated, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    shutil.copytree(generated, default_root(0))
    assert main(["datasets", "prepare", "embedded_3d"]) == 0
    printed = capsys.readouterr().out
    assert "embedded_3d dataset" in printed and str(default_root(0)) in printed.replace("\n", "")
    assert all(name in printed for name in ("cookie", "tile", "sponge", "validation", "dent", "stain", "hole"))


def test_scans_are_128_px_with_an_invalid_background_and_views_vary(generated):
    for recipe in CLASSES:
        folder = generated / recipe.name / "train" / "good"
        rgbs = [_png(p).astype(np.int16) for p in sorted((folder / "rgb").glob("*.png"))]
        clouds = [read_xyz(p) for p in sorted((folder / "xyz").glob("*.tiff"))]
        assert rgbs[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and clouds[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert Image.open(next(folder.glob("rgb/*.png"))).mode == "RGB"
        for xyz in clouds:
            valid = valid_points(xyz)
            assert 0.25 < valid.mean() < 0.75, recipe.name  # an object with invalid points around it
            assert (xyz[valid, 2] > 0.65).all() and (xyz[valid, 2] < 0.75).all()
        assert min(np.abs(a - b).mean() for a, b in zip(rgbs, rgbs[1:])) > 3.0, recipe.name
        assert min((valid_points(a) != valid_points(b)).mean() for a, b in zip(clouds, clouds[1:])) > 0.005


def test_the_written_files_are_the_scans_and_their_masks(generated):
    for class_index, recipe in enumerate(CLASSES):
        for defect in DEFECTS:
            scan = anomalous_scan(0, class_index, defect, 1)
            folder = generated / recipe.name / "test" / defect
            assert np.array_equal(_png(folder / "rgb" / "001.png"), scan.rgb)
            assert np.array_equal(tifffile.imread(folder / "xyz" / "001.tiff"), scan.xyz)
            assert np.array_equal(_png(folder / "gt" / "001.png"), scan.mask.astype(np.uint8) * 255)
        assert not _png(generated / recipe.name / "test" / "good" / "gt" / "000.png").any()


@pytest.mark.parametrize("class_index", range(len(CLASSES)), ids=[r.name for r in CLASSES])
def test_each_defect_changes_exactly_its_modalities_inside_its_mask(class_index):
    for defect in DEFECTS:
        for index in range(3):
            scan = anomalous_scan(7, class_index, defect, index)
            mask, where = scan.mask, (CLASSES[class_index].name, defect, index)
            assert 10 < mask.sum() < 0.2 * mask.size and not (mask & ~valid_points(scan.clean_xyz)).any(), where
            assert np.array_equal(scan.rgb[~mask], scan.clean_rgb[~mask]), where
            assert np.array_equal(scan.xyz[~mask], scan.clean_xyz[~mask]), where
            shows = DEFECT_SHOWS_IN[defect]
            if "depth" in shows:  # every masked point moved away from the camera
                assert (scan.xyz[mask, 2] > scan.clean_xyz[mask, 2]).all(), where
            else:
                assert np.array_equal(scan.xyz, scan.clean_xyz), where
            rgb_change = np.abs(scan.rgb.astype(np.int16) - scan.clean_rgb).max(axis=2)[mask]
            if "rgb" in shows:
                assert rgb_change.mean() > 20 and (rgb_change > 0).mean() > 0.9, (where, rgb_change.mean())
            else:
                assert np.array_equal(scan.rgb, scan.clean_rgb), where


def test_the_prepared_depth_sees_dents_and_holes_but_not_stains(tmp_path):
    for defect in DEFECTS:
        scan = anomalous_scan(0, 0, defect, 0)
        save_xyz(scan.xyz, tmp_path / f"{defect}.tiff")
        save_xyz(scan.clean_xyz, tmp_path / f"{defect}_clean.tiff")
        change = (depth_tensor(tmp_path / f"{defect}.tiff", IMAGE_SIZE)
                  - depth_tensor(tmp_path / f"{defect}_clean.tiff", IMAGE_SIZE))[0].abs().numpy()
        if "depth" in DEFECT_SHOWS_IN[defect]:
            assert change[scan.mask].mean() > 0.1 > 10 * change[~scan.mask].mean(), defect
        else:
            assert not change.any(), defect
