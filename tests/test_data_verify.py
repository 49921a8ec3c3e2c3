"""verify_dataset: every problem collected, pixel-level checks, and card schema errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.data.cards import CardError, card_from_mapping
from harness.data.fixtures import write_fixture
from harness.data.registry import _count_problems, count_samples, scan_dataset
from harness.data.verify import verify_dataset


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    info = write_fixture("mvtec_ad", tmp_path / "ad")
    (info.root / "bottle" / "ground_truth" / "contamination" / "001_mask.png").unlink()
    (info.root / "grid" / "test" / "bent" / "000.png").unlink()  # its mask is left without an image
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(info.root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png")
    (info.root / "stray").mkdir()
    report = verify_dataset("mvtec_ad", info.root, expected=info.counts)
    kinds = sorted(p.kind for p in report.errors)
    assert kinds == ["count-mismatch", "missing-mask", "orphan-mask", "size-mismatch", "unknown-folder"]
    by_kind = {p.kind: p for p in report.errors}
    assert by_kind["orphan-mask"].path.endswith("grid/ground_truth/bent/000_mask.png")
    assert "16x16 mask for a 32x32 image" in by_kind["size-mismatch"].message
    assert by_kind["count-mismatch"].class_name == "grid" and by_kind["count-mismatch"].defect_type == "bent"
    assert report.counts["grid"]["test"]["bent"] == 1 and report.files_decoded > 0


def test_loco_mask_files_must_hold_one_known_defect_value(tmp_path):
    info = write_fixture("mvtec_loco", tmp_path / "loco")
    mask_path = info.root / "pushpins" / "ground_truth" / "logical_anomalies" / "001" / "001.png"
    two_values = np.zeros((32, 32), np.uint8)
    two_values[:4, :4], two_values[10:14, 10:14] = 201, 99
    Image.fromarray(two_values).save(mask_path)
    (info.root / "breakfast_box" / "defects_config.json").unlink()
    report = verify_dataset("mvtec_loco", info.root, expected=info.counts)
    kinds = {p.kind: p for p in report.errors}
    assert set(kinds) == {"bad-mask-values", "missing-defects-config"}
    assert kinds["bad-mask-values"].path == str(mask_path) and "[99, 201]" in kinds["bad-mask-values"].message


def test_xyz_that_does_not_match_the_image_is_reported(tmp_path):
    import tifffile

    info = write_fixture("mvtec_3d", tmp_path / "3d")
    xyz_path = info.root / "foam" / "validation" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(xyz_path, np.zeros((32, 32), np.float32))
    report = verify_dataset("mvtec_3d", info.root, expected=info.counts)
    assert [(p.kind, p.path) for p in report.errors] == [("bad-xyz", str(xyz_path))]
    assert not verify_dataset("mvtec_3d", info.root, expected=info.counts, check_pixels=False).errors


def test_unverified_card_turns_count_mismatches_into_warnings(tmp_path):
    # no bundled card is unverified any more, and an --expect card is always taken as verified
    info = write_fixture("mvtec_3d", tmp_path / "3d")
    scan = scan_dataset("mvtec_3d", info.root, expected=info.counts)
    unverified = scan.card.with_counts({"bagel": {"train": {"good": 99}}}, verified=False)
    problems = _count_problems(unverified, ["bagel"], count_samples(scan.layout.samples), scan.layout, scan.root)
    assert [(p.kind, p.severity, p.split, p.defect_type) for p in problems] == [("count-mismatch", "warning", "train", "good")]
    assert "expected 99" in problems[0].message and "warning only" in problems[0].message


def test_card_schema_errors_name_the_key():
    with pytest.raises(CardError, match=r"classes.bottle.counts.train.good must be a count"):
        card_from_mapping({"name": "x", "layout": "mvtec_ad", "classes": {"bottle": {"counts": {"train": {"good": -1}}}}}, "x.yaml")
    with pytest.raises(CardError, match=r"x.yaml: classes.bottle.counts has split 'val'"):
        card_from_mapping({"name": "x", "layout": "mvtec_ad", "classes": {"bottle": {"counts": {"val": {"good": 1}}}}}, "x.yaml")
    with pytest.raises(CardError, match="missing required key 'layout'"):
        card_from_mapping({"name": "x", "classes": {}}, "x.yaml")
