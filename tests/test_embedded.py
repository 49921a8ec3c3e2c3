"""The embedded default dataset: deterministic, MVTec AD layout, counts as on its card, exact masks."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.data.embedded import (
    CLASSES,
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    anomalous_image,
    class_counts,
    load_source,
    manifest,
    manifest_digest,
    prepare_embedded,
    write_class,
)

CARD = Path(__file__).resolve().parents[1] / "datasets" / "embedded.yaml"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    started = time.perf_counter()
    root = prepare_embedded(seed=0, root=cache / "seed0")
    print(f"\nembedded dataset generated in {time.perf_counter() - started:.1f} s")
    return root


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_regenerates_byte_identical_over_a_partial_tree(generated, tmp_path):
    again = tmp_path / "again"
    (again / "brick" / "train" / "good").mkdir(parents=True)
    (again / "brick" / "train" / "good" / "stray.png").write_bytes(b"left by a killed run")
    assert prepare_embedded(seed=0, root=again) == again
    assert manifest(again) == manifest(generated)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_other_seed_gives_other_bytes(generated, tmp_path):
    write_class(tmp_path, 1, 0)
    other = manifest(tmp_path)
    brick = {k: v for k, v in manifest(generated).items() if k.startswith("brick/")}
    assert other.keys() == brick.keys()
    assert not set(other.items()) & set(brick.items())


def test_complete_default_root_is_reused(monkeypatch, tmp_path, generated):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    target = tmp_path / "embedded" / f"v{GENERATOR_VERSION}-seed0"
    shutil.copytree(generated, target)
    (target / "brick" / "train" / "good" / "000.png").write_bytes(b"left alone")
    assert prepare_embedded(seed=0) == target
    assert (target / "brick" / "train" / "good" / "000.png").read_bytes() == b"left alone"
    marker = json.loads((target / COMPLETE_MARKER).read_text())
    assert marker["generator_version"] == GENERATOR_VERSION and marker["files"] == len(manifest(generated))
    assert marker["manifest_sha256"] == manifest_digest(manifest(generated))


def test_counts_match_the_card_and_the_tree(generated):
    card = yaml.safe_load(CARD.read_text())
    assert card["name"] == "embedded" and card["layout"] == "mvtec_ad"
    assert card["generator"]["version"] == GENERATOR_VERSION
    assert len(card["classes"]) >= 6
    assert {c["kind"] for c in card["classes"].values()} == {"texture", "object"}
    for recipe in CLASSES:
        entry = card["classes"][recipe.name]
        assert entry["counts"] == class_counts(recipe), recipe.name
        assert entry["source"] == recipe.source and entry["kind"] == recipe.kind
        for split, per_type in entry["counts"].items():
            for defect, count in per_type.items():
                assert len(list((generated / recipe.name / split / defect).glob("*.png"))) == count
    assert sorted(card["classes"]) == sorted(r.name for r in CLASSES)


def test_masks_are_binary_nonempty_and_pair_by_stem(generated):
    for recipe in CLASSES:
        folder = generated / recipe.name
        assert not (folder / "ground_truth" / "good").exists()
        for defect in recipe.defects:
            images = sorted((folder / "test" / defect).glob("*.png"))
            masks = sorted((folder / "ground_truth" / defect).glob("*_mask.png"))
            assert [m.name.replace("_mask", "") for m in masks] == [i.name for i in images]
            for image_path, mask_path in zip(images, masks):
                image, mask = _png(image_path), _png(mask_path)
                assert mask.shape == image.shape[:2] == (256, 256)
                assert set(np.unique(mask)) == {0, 255}, mask_path
                assert 20 < (mask == 255).sum() < 0.35 * mask.size, mask_path


def test_images_are_256_png_single_channel_exactly_for_grey_sources(generated):
    for recipe in CLASSES:
        image = Image.open(generated / recipe.name / "train" / "good" / "000.png")
        assert image.size == (256, 256)
        assert image.mode == ("L" if load_source(recipe.source).shape[2] == 1 else "RGB"), recipe.name
        assert not image.info  # no metadata that could vary between runs


def test_train_images_vary_and_are_not_test_images(generated):
    for recipe in CLASSES:
        train = [_png(p).astype(np.int16) for p in sorted((generated / recipe.name / "train" / "good").glob("*.png"))]
        test = [_png(p).astype(np.int16) for p in sorted((generated / recipe.name / "test" / "good").glob("*.png"))]
        hashes = {a.tobytes() for a in train + test}
        assert len(hashes) == len(train) + len(test), recipe.name
        # not just noise apart: consecutive training views differ clearly (crop, rotation, light)
        differences = [np.abs(a - b).mean() for a, b in zip(train, train[1:])]
        assert min(differences) > 3.0, (recipe.name, min(differences))


@pytest.mark.parametrize("class_index", range(len(CLASSES)), ids=[r.name for r in CLASSES])
def test_masks_mark_exactly_the_changed_pixels_and_defects_are_visible(class_index):
    recipe = CLASSES[class_index]
    for defect in recipe.defects:
        for index in range(2):
            example = anomalous_image(5, class_index, defect, index)
            change = np.abs(example.defective - example.clean).max(axis=2)
            assert not change[~example.mask].any(), (recipe.name, defect, "changed pixels outside the mask")
            assert (change[example.mask] > 0).mean() > 0.97, (recipe.name, defect)
            # visible: the mean change inside the mask is well above the sensor noise (sigma <= 2.5)
            assert change[example.mask].mean() > 12, (recipe.name, defect, change[example.mask].mean())


def test_loads_through_the_mvtec_ad_loader(generated):
    from harness.data import load_dataset

    index = load_dataset("embedded", root=generated)
    assert index.card.layout == "mvtec_ad"
    assert index.counts() == {r.name: class_counts(r) for r in CLASSES}
    anomalous = [s for s in index.samples if s.is_anomalous]
    assert len(anomalous) == sum(r.per_defect * len(r.defects) for r in CLASSES)
    assert all(len(s.masks) == 1 and s.masks[0].name == f"{Path(s.sample_id).name}_mask.png" for s in anomalous)
    assert all(not s.masks for s in index.samples if not s.is_anomalous)
