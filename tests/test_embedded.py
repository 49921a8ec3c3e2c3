"""The embedded datasets (generator v2 as embedded, v3 as embedded_v3): deterministic, MVTec AD layout,
counts as on their cards, exact masks; v2's bytes pinned."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from harness.data.embedded import (
    CLASSES,
    CLASSES_V3,
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    IMAGE_SIZE,
    OBJECT_DEFECTS,
    OBJECT_DEFECTS_V3,
    TEXTURE_DEFECTS,
    TEXTURE_DEFECTS_V3,
    _image_rng,
    anomalous_image,
    class_counts,
    is_complete,
    load_source,
    manifest,
    manifest_digest,
    normal_image,
    prepare_embedded,
    version_classes,
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


# --- generator v3 (dataset embedded_v3) and the pinned v2 bytes ------------------------------------

V2_SEED0_MANIFEST_SHA256 = "bea6d32e982dfce44b06d6b8e0a2859d7953cf3e38dd32e3c746dcc60db2b8ff"  # computed before v3 landed
V3_SEED0_MANIFEST_SHA256 = "d00f85003a656286c047d5df6e4b9e34014e51a72564b092e2f4987a9d8753f9"  # the split the card measures
CARD_V3 = CARD.with_name("embedded_v3.yaml")


def test_v2_seed0_bytes_are_pinned(generated):
    entries = manifest(generated)
    assert len(entries) == 772 and manifest_digest(entries) == V2_SEED0_MANIFEST_SHA256


@pytest.fixture(scope="module")
def generated_v3(tmp_path_factory) -> Path:
    return prepare_embedded(seed=0, root=tmp_path_factory.mktemp("cache_v3") / "v3seed0", version=3)


def test_v3_regenerates_byte_identical_and_differs_from_v2(generated_v3, generated, tmp_path):
    assert manifest(prepare_embedded(seed=0, root=tmp_path / "again", version=3)) == manifest(generated_v3)
    assert manifest_digest(manifest(generated_v3)) == V3_SEED0_MANIFEST_SHA256
    marker = json.loads((generated_v3 / COMPLETE_MARKER).read_text())
    assert marker["generator_version"] == 3 and not is_complete(generated_v3, GENERATOR_VERSION)
    v2_train = _png(generated / "brick" / "train" / "good" / "000.png")
    assert not np.array_equal(_png(generated_v3 / "brick" / "train" / "good" / "000.png"), v2_train)


def test_v3_counts_match_its_card_and_the_tree(generated_v3):
    card = yaml.safe_load(CARD_V3.read_text())
    assert card["name"] == "embedded_v3" and card["generator"]["version"] == 3
    assert sorted(card["classes"]) == sorted(r.name for r in CLASSES_V3) == sorted(r.name for r in CLASSES)
    for recipe in CLASSES_V3:
        entry = card["classes"][recipe.name]
        assert entry["counts"] == class_counts(recipe) and entry["source"] == recipe.source, recipe.name
        for split, per_type in entry["counts"].items():
            for defect, count in per_type.items():
                assert len(list((generated_v3 / recipe.name / split / defect).glob("*.png"))) == count
    assert not set(TEXTURE_DEFECTS_V3 + OBJECT_DEFECTS_V3) & set(TEXTURE_DEFECTS + OBJECT_DEFECTS)


def test_v3_loads_by_name_through_the_registry(generated_v3, monkeypatch, tmp_path):
    from harness.data import load_dataset

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    shutil.copytree(generated_v3, tmp_path / "embedded" / "v3-seed0")
    index = load_dataset("embedded_v3")
    assert index.root == (tmp_path / "embedded" / "v3-seed0").resolve()
    assert index.counts() == {r.name: class_counts(r) for r in CLASSES_V3}


@pytest.mark.parametrize("class_index", range(len(CLASSES_V3)), ids=[r.name for r in CLASSES_V3])
def test_v3_masks_mark_exactly_the_changed_pixels_and_defects_are_subtler(class_index):
    recipe = CLASSES_V3[class_index]
    for defect in recipe.defects:
        areas = []
        for index in range(2):
            example = anomalous_image(5, class_index, defect, index, version=3)
            change = np.abs(example.defective - example.clean).max(axis=2)
            assert not change[~example.mask].any(), (recipe.name, defect, "changed pixels outside the mask")
            assert (change[example.mask] > 0).mean() > 0.97, (recipe.name, defect)
            assert change[example.mask].mean() > 5, (recipe.name, defect, change[example.mask].mean())
            areas.append(example.mask.sum())
        assert 20 < min(areas) and max(areas) < 0.1 * IMAGE_SIZE**2, (recipe.name, defect, areas)


def test_duplicated_part_keeps_the_original_and_misplaced_part_empties_it():
    coins = [r.name for r in CLASSES_V3].index("coins")
    duplicated = anomalous_image(3, coins, "duplicated_part", 0, version=3)
    misplaced = anomalous_image(3, coins, "misplaced_part", 0, version=3)
    # one pasted blob only (the source stays as it was) against a pasted blob plus a filled hole
    assert ndimage.label(duplicated.mask)[1] == 1
    assert ndimage.label(misplaced.mask)[1] == 2


def test_v3_normal_views_vary_more_than_v2():
    spread = {}
    for version in (2, 3):
        recipe = version_classes(version)[4]  # coins: an object, where pose shows most
        views = [normal_image(recipe, _image_rng(1, 4, "train", 0, i, version)) for i in range(12)]
        spread[version] = np.mean([np.abs(a - b).mean() for a, b in zip(views, views[1:])])
    assert spread[3] > 1.2 * spread[2], spread


def test_unknown_version_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown embedded generator version 7: expected one of 2, 3"):
        prepare_embedded(seed=0, root=Path("/nonexistent"), version=7)
