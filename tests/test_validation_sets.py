"""The validation sets: deterministic bytes, counts as on their cards, exact masks, read by the loader."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.data.cards import load_card
from harness.data.embedded import CLASSES as EMBEDDED_CLASSES
from harness.data.embedded import DONOR_SOURCES, manifest
from harness.data.registry import cards_dir
from harness.data.validation_sets import (
    DEFECT_DRAWERS,
    IMAGE_SIZE,
    VALIDATION_SETS,
    anomalous_view,
    class_counts,
    prepare_validation_set,
    write_class,
)

SET_NAMES = sorted(VALIDATION_SETS)
EVERY_DEFECT = [(name, index, defect) for name in SET_NAMES
                for index, recipe in enumerate(VALIDATION_SETS[name].classes) for defect in recipe.defects]


@pytest.fixture(scope="module")
def validation_a(tmp_path_factory):
    """validation_a as load_dataset builds it on first use, without a root, into a private cache."""
    from harness.data import load_dataset

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_dataset("validation_a")


def test_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(validation_a, tmp_path):
    dataset = VALIDATION_SETS["validation_a"]
    for folder, seed in (("again", 0), ("other", 1)):
        write_class(dataset, tmp_path / folder, seed, 0)
    prefix = f"{dataset.classes[0].name}/"
    first = {k: v for k, v in manifest(validation_a.root).items() if k.startswith(prefix)}
    again, other = manifest(tmp_path / "again"), manifest(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    assert not set(first.items()) & set(other.items())


def test_the_two_sets_draw_apart_for_the_same_seed():
    a, b = (anomalous_view(VALIDATION_SETS[n], 0, 0, "crack", 0) for n in SET_NAMES)
    assert not np.array_equal(a.mask, b.mask)


@pytest.mark.parametrize("name", SET_NAMES)
def test_cards_list_exactly_the_classes_kinds_and_counts_written(name):
    card = load_card(cards_dir() / f"{name}.yaml")
    recipes = VALIDATION_SETS[name].classes
    assert card.layout == "mvtec_ad" and card.counts_verified
    assert card.class_names == [r.name for r in recipes]
    for recipe in recipes:
        assert card.classes[recipe.name].kind == recipe.kind
        assert card.classes[recipe.name].counts == class_counts(recipe)


def test_sources_and_defects_are_not_the_embedded_generator_s():
    embedded_sources = {r.source for r in EMBEDDED_CLASSES} | set(DONOR_SOURCES)
    used = {r.source for s in VALIDATION_SETS.values() for r in s.classes}
    assert not used & embedded_sources
    from harness.data.defects import DEFECT_DRAWERS as EMBEDDED_DEFECTS

    assert not set(DEFECT_DRAWERS) & set(EMBEDDED_DEFECTS)


@pytest.mark.parametrize(("name", "class_index", "defect"), EVERY_DEFECT,
                         ids=[f"{n}-{VALIDATION_SETS[n].classes[i].name}-{d}" for n, i, d in EVERY_DEFECT])
def test_masks_mark_exactly_the_changed_pixels(name, class_index, defect):
    for image_index in range(2):
        example = anomalous_view(VALIDATION_SETS[name], 3, class_index, defect, image_index)
        change = np.abs(example.defective - example.clean).max(axis=2)
        assert not change[~example.mask].any(), "pixels changed outside the mask"
        assert (change[example.mask] > 0).mean() > 0.9
        # visible above the sensor noise (sigma <= 2.5), yet the defects are meant to be subtle
        assert change[example.mask].mean() > 4, change[example.mask].mean()


def test_built_on_first_use_and_read_by_the_mvtec_ad_loader_with_the_card_s_counts(validation_a):
    from harness.data.validation_sets import default_root

    assert validation_a.root == default_root("validation_a").resolve()
    recipes = VALIDATION_SETS["validation_a"].classes
    assert validation_a.counts() == {r.name: class_counts(r) for r in recipes}
    anomalous = [s for s in validation_a.samples if s.is_anomalous]
    assert anomalous and all(len(s.masks) == 1 for s in anomalous)
    for sample in anomalous[::17]:
        mask = np.asarray(Image.open(sample.masks[0]))
        assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(mask)) == {0, 255}


def test_a_trial_on_a_validation_set_needs_no_data_root():
    from harness.training.trial_config import dataset_issues

    assert dataset_issues("validation_b", None, ["flag"], None) == []
    assert [i.key for i in dataset_issues("validation_b", None, ["fundus"], None)] == ["classes"]


def test_an_unknown_set_name_is_refused_by_name():
    with pytest.raises(ValueError, match="validation_c.*validation_a, validation_b"):
        prepare_validation_set("validation_c")


def test_datasets_prepare_builds_validation_b_and_prints_its_counts(monkeypatch, tmp_path, capsys):
    from harness.cli import main
    from harness.data.validation_sets import default_root

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["datasets", "prepare", "validation_b", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert str(default_root("validation_b", 2)) in out.replace("\n", "")
    assert "flipped_part" in out and "cameraman" in out
