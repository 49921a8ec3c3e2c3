"""Layout readers on tiny fixtures written in each official on-disk layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from harness.data import DatasetError, get_card, list_cards, load_dataset, mask_channel_values, read_mask_stack, read_rgb, read_xyz
from harness.data.cards import CardError
from harness.data.fixtures import write_fixture
from harness.data.images import valid_points


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: write_fixture(layout, root / layout) for layout in ("mvtec_ad", "visa", "mvtec_loco", "mvtec_3d", "generic")}


def _load(info, **kwargs):
    return load_dataset(info.dataset, info.root, expected=info.counts, **kwargs)


@pytest.mark.parametrize("layout", ["mvtec_ad", "visa", "mvtec_loco", "mvtec_3d"])
def test_counts_labels_and_ids_match_the_fixture(fixtures, layout):
    info = fixtures[layout]
    index = _load(info)
    assert index.counts() == info.counts
    assert index.classes == list(info.counts)
    for sample in index.samples:
        assert sample.label == (0 if sample.defect_type == "good" else 1)
        assert bool(sample.masks) == (sample.label == 1)
        assert sample.sample_id.startswith(f"{sample.class_name}/{sample.split}/") or layout == "visa"
        assert (index.root / sample.sample_id).with_suffix(sample.images["rgb"].suffix) == sample.images["rgb"]
    assert [s.sample_id for s in _load(info).samples] == [s.sample_id for s in index.samples]


def test_mvtec_ad_ids_and_grayscale_class_becomes_three_channels(fixtures):
    index = _load(fixtures["mvtec_ad"])
    ids = {s.sample_id for s in index.samples}
    assert {"bottle/train/good/000", "bottle/test/broken_large/001", "grid/test/bent/000"} <= ids
    grid = next(s for s in index.samples if s.class_name == "grid")
    assert Image.open(grid.images["rgb"]).mode == "L"
    rgb = read_rgb(grid.images["rgb"])
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert read_rgb(grid.images["rgb"], size=16).shape == (16, 16, 3)


def test_masks_pair_by_stem_even_when_sorted_orders_differ(tmp_path):
    info = write_fixture("mvtec_ad", tmp_path / "ad", classes={"bottle": (False, ("crack",))})
    test_dir, gt_dir = info.root / "bottle" / "test" / "crack", info.root / "bottle" / "ground_truth" / "crack"
    # sorted images: 7.png < 70.png, sorted masks: 70_mask.png < 7_mask.png
    for stem, side in (("7", 3), ("70", 9)):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(test_dir / f"{stem}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[:side, :side] = 255
        Image.fromarray(mask).save(gt_dir / f"{stem}_mask.png")
    assert [p.name for p in sorted(gt_dir.iterdir())][-2:] == ["70_mask.png", "7_mask.png"]
    info.counts["bottle"]["test"]["crack"] += 2
    index = _load(info)
    by_id = {s.sample_id: s for s in index.samples}
    assert read_mask_stack(by_id["bottle/test/crack/7"]).sum() == 9
    assert read_mask_stack(by_id["bottle/test/crack/70"]).sum() == 81
    for i in range(2):  # fixture masks: a square of side 4 + 2 i
        assert read_mask_stack(by_id[f"bottle/test/crack/{i:03d}"]).sum() == (4 + 2 * i) ** 2


def test_normal_mask_is_one_empty_channel_at_image_size(fixtures):
    index = _load(fixtures["mvtec_ad"])
    normal = next(s for s in index.split("test") if s.defect_type == "good")
    assert normal.label == 0
    stack = read_mask_stack(normal)
    assert stack.shape == (1, 32, 32) and stack.dtype == bool and not stack.any()
    assert read_mask_stack(normal, size=(8, 12)).shape == (1, 8, 12)


def test_visa_reads_the_1cls_split_and_binarises_non_binary_masks(fixtures):
    index = _load(fixtures["visa"])
    assert len(index.split("train")) == 6 and all(s.defect_type == "good" for s in index.split("train"))
    anomalous = [s for s in index.samples if s.label == 1]
    assert {s.defect_type for s in anomalous} == {"anomaly"}
    assert anomalous[0].sample_id == "candle/Data/Images/Anomaly/000"
    for sample in anomalous:
        raw = np.asarray(Image.open(sample.masks[0]))
        assert raw.max() < 255 and set(np.unique(raw)) == {0, raw.max()}  # ids, not 0/255
        side = 4 + 2 * int(sample.masks[0].stem)
        stack = read_mask_stack(sample)
        assert stack.dtype == bool and stack.shape == (1, 32, 32) and stack.sum() == side ** 2
        assert sample.masks[0].stem == sample.images["rgb"].stem


def test_visa_bad_csv_row_is_named_by_line(tmp_path):
    info = write_fixture("visa", tmp_path / "visa")
    csv_path = info.root / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text() + "candle,val,normal,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(DatasetError) as err:
        _load(info)
    assert f"{csv_path} line 16" in str(err.value)


def test_loco_keeps_every_mask_file_as_a_channel_and_the_defects_config(fixtures):
    info = fixtures["mvtec_loco"]
    index = _load(info)
    assert index.defects_config == info.defects_config
    assert {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"} == set(index.defects_config["pushpins"][0])
    by_id = {s.sample_id: s for s in index.samples}
    two = by_id["pushpins/test/structural_anomalies/001"]
    assert [p.name for p in two.masks] == ["000.png", "001.png"]
    stack = read_mask_stack(two)
    assert stack.shape == (2, 32, 32)
    assert stack[0].sum() == 6 ** 2 and stack[1].sum() == 7 ** 2
    values = mask_channel_values(two)
    assert values == [210, 211]
    assert set(values) <= {e["pixel_value"] for e in index.defects_config["pushpins"]}
    assert read_mask_stack(by_id["pushpins/test/logical_anomalies/000"]).shape == (1, 32, 32)


@pytest.mark.parametrize("layout", ["mvtec_loco", "mvtec_3d"])
def test_validation_split_is_kept_apart(fixtures, layout):
    index = _load(fixtures[layout])
    train, validation = index.split("train"), index.split("validation")
    assert len(train) == 6 and len(validation) == 4
    assert all("/validation/" in s.sample_id for s in validation)
    assert not any("/validation/" in s.sample_id for s in train)


def test_mvtec_3d_xyz_is_float32_with_zero_invalid_points(fixtures):
    index = _load(fixtures["mvtec_3d"])
    sample = [s for s in index.split("test") if s.label == 1][-1]
    assert set(sample.images) == {"rgb", "xyz"} and sample.label == 1
    assert sample.sample_id.startswith("foam/test/color/rgb/")
    xyz = read_xyz(sample.images["xyz"])
    assert xyz.dtype == np.float32 and xyz.shape == (32, 32, 3)
    valid = valid_points(xyz)
    assert not valid[:, :3].any() and valid[:, 3:].all()
    assert read_xyz(sample.images["xyz"], size=16).shape == (16, 16, 3)
    normal_test = next(s for s in index.split("test") if s.label == 0)
    assert normal_test.masks == () and not read_mask_stack(normal_test).any()


def test_generic_discovers_classes_and_reports_counts(fixtures):
    index = load_dataset("generic", fixtures["generic"].root)
    assert sorted(index.classes) == ["gear", "widget"]
    assert index.counts() == fixtures["generic"].counts
    assert index.card.counts_verified is False


def test_count_mismatch_names_class_split_defect_and_folder(tmp_path):
    info = write_fixture("mvtec_ad", tmp_path / "ad")
    (info.root / "grid" / "train" / "good" / "001.png").unlink()
    with pytest.raises(DatasetError) as err:
        _load(info)
    message = str(err.value)
    assert "class 'grid', split 'train', defect 'good': found 2 image(s)" in message
    assert str(info.root / "grid" / "train" / "good") in message and "expected 3" in message
    assert len(_load(info, check_counts=False).samples) == 15


def test_against_the_real_card_a_fixture_fails_with_the_cards_numbers(fixtures):
    with pytest.raises(DatasetError) as err:
        load_dataset("mvtec_ad", fixtures["mvtec_ad"].root)
    message = str(err.value)
    assert "class 'bottle', split 'train', defect 'good': found 3 image(s)" in message and "expected 209" in message
    assert "class 'cable': folder" in message  # a class of the card that is absent


def test_class_subset_and_unknown_class(fixtures):
    index = load_dataset("visa", fixtures["visa"].root, classes=["pcb1"], expected=fixtures["visa"].counts)
    assert index.classes == ["pcb1"] and {s.class_name for s in index.samples} == {"pcb1"}
    with pytest.raises(DatasetError, match="its classes are: candle"):
        load_dataset("visa", fixtures["visa"].root, classes=["pcb9"])


def test_fingerprint_is_stable_and_tracks_sizes(tmp_path):
    info = write_fixture("mvtec_loco", tmp_path / "loco")
    first = _load(info).fingerprint()
    assert first == _load(info).fingerprint() and len(first) == 64
    copy = tmp_path / "elsewhere" / "loco"
    shutil.copytree(info.root, copy)
    assert load_dataset("mvtec_loco", copy, expected=info.counts).fingerprint() == first
    config = info.root / "pushpins" / "defects_config.json"
    config.write_text(json.dumps(json.loads(config.read_text())) + " ")
    assert _load(info).fingerprint() != first


def test_bundled_cards_hold_the_published_totals():
    cards = {c.name: c for c in list_cards()}
    assert {"mvtec_ad", "visa", "mvtec_loco", "mvtec_3d"} <= set(cards)

    def total(card, split, defect=None):
        return sum(n for c in card.classes.values() for d, n in c.counts.get(split, {}).items() if defect in (None, d))

    ad = cards["mvtec_ad"]
    assert len(ad.classes) == 15 and total(ad, "train") + total(ad, "test") == 5354
    visa = cards["visa"]
    assert (total(visa, "train"), total(visa, "test", "good"), total(visa, "test", "anomaly")) == (8659, 962, 1200)
    assert "CC BY 4.0" in visa.licence and "CC BY-NC-SA 4.0" in visa.licence
    loco = cards["mvtec_loco"]
    assert (total(loco, "train"), total(loco, "validation"), total(loco, "test")) == (1772, 304, 1568)
    three_d = cards["mvtec_3d"]
    assert three_d.modalities == ("rgb", "xyz") and three_d.counts_verified is True
    assert (total(three_d, "train"), total(three_d, "validation"), total(three_d, "test")) == (2656, 294, 1197)
    for card in cards.values():
        assert card.licence and card.citation and card.layout


def test_unknown_card_lists_known_names():
    with pytest.raises(CardError, match="known datasets: .*mvtec_ad.*visa"):
        get_card("mvtec")
