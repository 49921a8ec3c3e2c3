"""AnomalyMoE's offline component masks (harness.components; spec 4.3, section 9 decision 22).

Real parts throughout: the embedded dataset (two object classes), lite0's packaged weights at 64 px
(level 3: a 4 x 4 patch grid, so a quarter of each image's patches make the coreset), 32 px masks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import threshold_otsu

from harness.cli import main
from harness.components import ComponentError, component_masks, components_folder
from harness.components import segment
from harness.data import load_dataset
from methods.base import ComponentSpec

CLASSES = ["coins", "coffee"]
SPEC = ComponentSpec("tf_efficientnet_lite0", level=3, image_size=64, mask_size=32, clusters=5, coreset_fraction=0.25, weights="packaged", seed=0)
SPEC_OPTIONS = ["--backbone", "tf_efficientnet_lite0", "--level", "3", "--image-size", "64", "--mask-size", "32",
                "--coreset-fraction", "0.25", "--weights", "packaged"]


@pytest.fixture(scope="module")
def dataset():
    index = load_dataset("embedded", classes=CLASSES)
    return index, index.fingerprint()


@pytest.fixture(scope="module")
def cached(dataset, tmp_path_factory):
    """Both splits computed into a private cache, plus the cache folder."""
    index, fingerprint = dataset
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(folder))
        train = component_masks(index.name, fingerprint, "train", index.split("train"), SPEC)
        test = component_masks(index.name, fingerprint, "test", index.split("test"), SPEC, train_samples=index.split("train"))
    return folder, train, test


def test_masks_have_the_spec_shape_and_at_most_k_components_packed_first(dataset, cached):
    index, _ = dataset
    _, train, test = cached
    for result, split in ((train, "train"), (test, "test")):
        n = len(index.split(split))
        assert result.masks.shape == (n, SPEC.clusters, SPEC.mask_size, SPEC.mask_size) and result.masks.dtype == bool
        assert result.counts.shape == (n,) and (result.counts <= SPEC.clusters).all()
        filled = result.masks.any(axis=(2, 3))
        slots = np.arange(SPEC.clusters)[None, :]
        assert (filled == (slots < result.counts[:, None])).all()  # components first, then empty slots
        assert ((result.slots >= 0) == filled).all()
        assert result.counts.mean() > 1  # real object photos do have components
    masks, counts = test.rows([3, 0, 7])
    assert masks.dtype == torch.bool and masks.shape == (3, SPEC.clusters, SPEC.mask_size, SPEC.mask_size)
    assert counts.dtype == torch.long and counts.tolist() == test.counts[[3, 0, 7]].tolist()
    assert torch.equal(masks[1], torch.from_numpy(test.masks[0]))


def test_test_split_uses_the_training_k_means_models(cached):
    _, train, test = cached
    assert test.centre_classes == train.centre_classes == CLASSES
    assert np.array_equal(test.centres, train.centres) and np.array_equal(test.kept, train.kept)
    for i, name in enumerate(test.class_names):
        kept = np.flatnonzero(train.kept[CLASSES.index(name)])
        assert set(test.slots[i][test.slots[i] >= 0].tolist()) <= set(kept.tolist())


def test_two_runs_are_bit_identical(dataset, cached):
    index, fingerprint = dataset
    _, train, _ = cached
    again = component_masks(index.name, fingerprint, "train", index.split("train"), SPEC, use_cache=False)
    assert not again.loaded and again.path is None
    assert np.array_equal(again.masks, train.masks) and np.array_equal(again.counts, train.counts)
    assert again.centres.tobytes() == train.centres.tobytes() and np.array_equal(again.slots, train.slots)


def test_second_call_reads_the_cache_and_leaves_the_file_alone(dataset, cached, monkeypatch):
    index, fingerprint = dataset
    folder, train, test = cached
    monkeypatch.setenv("HARNESS_CACHE", str(folder))
    assert not train.loaded and train.path.is_file() and train.path.parent.parent == components_folder()
    before = test.path.read_bytes()
    done = []
    hit = component_masks(index.name, fingerprint, "test", index.split("test"), SPEC, train_samples=index.split("train"), progress=done.append)
    assert hit.loaded and hit.path == test.path and test.path.read_bytes() == before
    assert sum(done) == len(index.split("test"))
    assert np.array_equal(hit.masks, test.masks) and np.array_equal(hit.counts, test.counts)


def test_test_split_key_follows_the_training_split(dataset, cached, monkeypatch):
    index, fingerprint = dataset
    folder, _, test = cached
    monkeypatch.setenv("HARNESS_CACHE", str(folder))
    fewer = index.split("train")[1:]
    other = component_masks(index.name, fingerprint, "test", index.split("test"), SPEC, train_samples=fewer)
    assert other.path != test.path and not other.loaded
    with pytest.raises(ValueError, match="need train_samples"):
        component_masks(index.name, fingerprint, "test", index.split("test"), SPEC)


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_a_damaged_cache_file_is_computed_again_with_a_warning(dataset, tmp_path, monkeypatch, damage):
    index, fingerprint = dataset
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    samples = [s for s in index.split("train") if s.class_name == "coins"][:12]
    first = component_masks(index.name, fingerprint, "train", samples, SPEC)
    if damage == "truncate":
        first.path.write_bytes(first.path.read_bytes()[:300])
    else:  # a well-formed file whose contents no longer match its digest
        with np.load(first.path) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["counts"] = arrays["counts"] + 1
        with open(first.path, "wb") as file:
            np.savez_compressed(file, **arrays)
    with pytest.warns(UserWarning, match="damaged"):
        again = component_masks(index.name, fingerprint, "train", samples, SPEC)
    assert not again.loaded and np.array_equal(again.counts, first.counts) and np.array_equal(again.masks, first.masks)
    assert component_masks(index.name, fingerprint, "train", samples, SPEC).loaded  # rewritten intact


def test_a_blank_image_has_zero_components(dataset, tmp_path):
    index, fingerprint = dataset
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8)).save(path)
    real = [s for s in index.split("test") if s.class_name == "coins"][:2]
    blank = dataclasses.replace(real[0], sample_id="coins/test/blank/000", images={"rgb": Path(path)})
    result = component_masks(index.name, fingerprint, "test", [blank, *real], SPEC, train_samples=index.split("train"), use_cache=False)
    assert result.counts[0] == 0 and not result.masks[0].any() and (result.slots[0] == -1).all()
    assert (result.counts[1:] > 0).all()
    masks, counts = result.rows([0])
    assert counts.tolist() == [0] and not masks.any()


def test_too_small_a_coreset_names_the_setting(dataset):
    index, fingerprint = dataset
    samples = [s for s in index.split("train") if s.class_name == "coins"][:4]
    with pytest.raises(ComponentError, match="raise coreset_fraction"):
        component_masks(index.name, fingerprint, "train", samples, dataclasses.replace(SPEC, coreset_fraction=0.01), use_cache=False)


def test_otsu_matches_opencv_semantics_as_skimage_computes_them():
    rng = np.random.default_rng(0)
    for trial in range(50):
        gray = (rng.random((24, 24)) ** (1 + trial % 4) * 255).astype(np.uint8)
        assert np.array_equal(gray > segment.otsu_threshold(gray), gray > threshold_otsu(gray))
    assert segment.otsu_threshold(np.full((8, 8), 90, dtype=np.uint8)) == 0  # one value: nothing to split


def test_background_clusters_are_dropped_as_the_official_filter_does():
    m = 448  # the official side, so the 10 / 20 / 11 px constants apply unscaled
    heat = np.zeros((4, m, m), dtype=np.uint8)
    heat[0, 150:300, 150:300] = 200  # an object in the middle: kept
    heat[1] = 200
    heat[1, 150:300, 150:300] = 0  # the background around it, touching all four corners: dropped
    heat[2, 150:300, 150:300] = 60  # a faint blob whose blurred maximum is not above 64: dropped
    heat[3, :100, :100] = heat[3, -100:, :100] = 200  # two corners only: kept
    assert segment.foreground_clusters(heat).tolist() == [True, False, False, True]
    masks, slots, count = segment.image_components(heat, np.array([True, False, True, True]))
    assert count == 2 and slots.tolist() == [0, 3, -1, -1] and masks[0, 200, 200] and not masks[2:].any()


@pytest.mark.skipif(not segment.dense_crf_available(), reason="pydensecrf does not import here")
def test_dense_crf_refinement_gives_masks_of_the_spec_shape(dataset):
    index, fingerprint = dataset
    samples = [s for s in index.split("train") if s.class_name == "coins"][:12]
    result = component_masks(index.name, fingerprint, "train", samples, SPEC, use_cache=False, dense_crf=True)
    assert result.masks.shape == (12, SPEC.clusters, SPEC.mask_size, SPEC.mask_size) and (result.counts <= SPEC.clusters).all()


@pytest.mark.skipif(segment.dense_crf_available(), reason="pydensecrf imports here")
def test_dense_crf_without_its_package_is_a_clear_error(dataset):
    index, fingerprint = dataset
    with pytest.raises(ComponentError, match="pydensecrf"):
        component_masks(index.name, fingerprint, "train", index.split("train")[:2], SPEC, dense_crf=True)


def test_cli_prepares_both_splits_and_reports_per_class(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["datasets", "prepare-components", "embedded", "--classes", ",".join(CLASSES), *SPEC_OPTIONS]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.count("│") >= 5]
    assert {tuple(c.strip() for c in line.split("│")[1:3]) for line in rows} == {(c, s) for c in CLASSES for s in ("train", "test")}
    assert "train: computed and cached at" in out and str(tmp_path / "components") in out
    assert main(["datasets", "prepare-components", "embedded", "--classes", ",".join(CLASSES), *SPEC_OPTIONS]) == 0
    assert "test: read from the cache" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--clusters", "0"], "--clusters: got 0; expected an integer >= 1"),
    (["--coreset-fraction", "1.5"], "--coreset-fraction: got 1.5; expected a number in (0, 1]"),
    (["--classes", "nosuch"], "--classes: got 'nosuch'; expected a class of dataset embedded"),
])
def test_cli_bad_argument_is_one_message_and_exit_2(capsys, extra, message):
    assert main(["datasets", "prepare-components", "embedded", *SPEC_OPTIONS, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
