"""Real-IAD: the official layout (per-class JSON splits, five views, masks) read from a tiny fixture."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main
from harness.data import DatasetError, get_card, load_dataset, read_mask_stack
from harness.data.fixtures import REAL_IAD_OBJECTS, write_real_iad_fixture
from harness.data.layouts.real_iad import VIEWS
from harness.data.verify import verify_dataset


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One fixture for the tests that only read it."""
    return write_real_iad_fixture(tmp_path_factory.mktemp("real_iad") / "Real-IAD")


@pytest.fixture
def fresh(tmp_path):
    """A fixture of its own, for a test that breaks something."""
    return write_real_iad_fixture(tmp_path / "Real-IAD")


def _load(info, **kwargs):
    return load_dataset("real_iad", info.root, expected=info.counts, **kwargs)


def _per_view(counts, n_views):
    return {c: {s: {d: n * n_views // len(VIEWS) for d, n in per.items()} for s, per in splits.items()} for c, splits in counts.items()}


def _json(info, cls="audiojack", folder="realiad_jsons"):
    return info.root / "realiad_jsons" / folder / f"{cls}.json"


def _errors(info, **kwargs):
    """Every error but the count mismatches that follow from it."""
    return [p for p in verify_dataset("real_iad", info.root, expected=info.counts, **kwargs).errors if p.kind != "count-mismatch"]


def test_counts_per_class_and_split_with_all_five_views_by_default(shared):
    index = _load(shared)
    assert index.counts() == shared.counts
    assert shared.counts["audiojack"] == {"train": {"good": 10}, "test": {"good": 5, "AK": 5, "ZW": 5}}
    assert index.options["views"] == VIEWS and index.options["json_dir"] == "realiad_jsons"
    objects = {}
    for sample in index.samples:
        objects.setdefault(sample.extra["object_id"], []).append(sample.extra["view"])
        assert f"_{sample.extra['view']}_" in sample.sample_id.rsplit("/", 1)[1]
        assert sample.label == (0 if sample.defect_type == "good" else 1)
        assert sample.extra["anomaly_class"] == ("OK" if sample.defect_type == "good" else sample.defect_type)
    assert len(objects) == 2 * len(REAL_IAD_OBJECTS)
    assert all(sorted(views) == list(VIEWS) for views in objects.values())
    assert len({s.sample_id for s in index.samples}) == len(index.samples) == 50


def test_sample_ids_are_root_relative_paths_that_carry_the_view(shared):
    ids = {s.sample_id for s in _load(shared).samples}
    assert "realiad_1024/audiojack/OK/S0001/audiojack_0001_OK_C1_2023092209010" + "1" in ids
    assert "realiad_1024/toy_brick/NG/ZW/S0005/toy_brick_0005_NG_ZW_C3_20230922090503" in ids


def test_anomalous_views_pair_with_their_own_mask_and_normal_views_have_none(shared):
    index = _load(shared)
    for sample in index.samples:
        if sample.label == 0:
            assert sample.masks == () and not read_mask_stack(sample).any()
            continue
        (mask,) = sample.masks
        assert mask.stem == sample.images["rgb"].stem and mask.suffix == ".png"
        number = int(sample.extra["object_id"].split("_")[-3])  # fixture object n: defect square of side 4 + 2 n
        assert read_mask_stack(sample).sum() == (4 + 2 * number) ** 2


def test_one_view_when_asked_and_the_option_is_recorded(shared):
    for views in (["C1"], "C1", ("C1", "C1")):
        index = load_dataset("real_iad", shared.root, expected=_per_view(shared.counts, 1), options={"views": views})
        assert {s.extra["view"] for s in index.samples} == {"C1"} and len(index.samples) == 10
        assert index.options["views"] == ("C1",)
    two = load_dataset("real_iad", shared.root, expected=_per_view(shared.counts, 2), options={"views": "C5, C2"})
    assert two.options["views"] == ("C2", "C5") and {s.extra["view"] for s in two.samples} == {"C2", "C5"}
    assert two.fingerprint() != _load(shared).fingerprint()


def test_json_dir_chooses_the_split_files_nested_or_beside(fresh):
    single = load_dataset("real_iad", fresh.root, expected=_per_view(fresh.counts, 1), options={"json_dir": "realiad_jsons_sv"})
    assert {s.extra["view"] for s in single.samples} == {"C1"}
    assert {p.parent.name for p in single.aux_files} == {"realiad_jsons_sv"}
    # the official README draws the JSON folders beside realiad_jsons/ rather than inside it
    shutil.move(str(fresh.root / "realiad_jsons" / "realiad_jsons_sv"), str(fresh.root / "realiad_jsons_sv"))
    beside = load_dataset("real_iad", fresh.root, expected=_per_view(fresh.counts, 1), options={"json_dir": "realiad_jsons_sv"})
    assert [s.sample_id for s in beside.samples] == [s.sample_id for s in single.samples]


def test_bad_options_name_the_option_and_what_it_takes(shared):
    cases = [({"views": ["C1", "C7"]}, "option 'views' has 'C7'; expected a non-empty subset of the camera views C1, C2, C3, C4, C5"),
             ({"views": []}, "option 'views' has no view"),
             ({"json_dir": "realiad_json"}, "option 'json_dir' is 'realiad_json'; expected one of realiad_jsons, realiad_jsons_sv"),
             ({"image_dir": "realiad_2048"}, "option 'image_dir' is 'realiad_2048'; expected one of realiad_1024"),
             ({"view": "C1"}, "unknown option(s) 'view'; Real-IAD options are: views, json_dir, image_dir")]
    for options, message in cases:
        with pytest.raises(DatasetError) as err:
            load_dataset("real_iad", shared.root, expected=shared.counts, options=options)
        assert message in str(err.value) and "dataset 'real_iad'" in str(err.value)
    with pytest.raises(DatasetError, match="takes no options; got 'views'"):
        load_dataset("mvtec_ad", shared.root, options={"views": ["C1"]})


def test_verify_command_reports_the_counts_and_passes(shared, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    card = shared.write_card(shared.root.parent / "expected_card.yaml")
    assert main(["datasets", "verify", str(shared.root), "--dataset", "real_iad", "--expect", str(card)]) == 0
    out = capsys.readouterr().out
    assert "50 samples, 70 files decoded" in out and "OK" in out
    assert verify_dataset("real_iad", shared.root, expected=shared.counts).counts == shared.counts


def test_missing_mask_file_and_unlisted_mask_are_named(fresh):
    sample = next(s for s in _load(fresh).samples if s.label == 1)
    sample.masks[0].unlink()
    document = json.loads(_json(fresh).read_text())
    unlisted = [e for e in document["test"] if e["mask_path"] is not None][-1]  # another view than sample's
    unlisted["mask_path"] = None
    _json(fresh).write_text(json.dumps(document))
    errors = {p.kind: [] for p in _errors(fresh)}
    for p in _errors(fresh):
        errors[p.kind].append(p)
    assert set(errors) == {"missing-mask"} and len(errors["missing-mask"]) == 2
    messages = " ".join(p.message for p in errors["missing-mask"])
    assert f"mask {sample.masks[0]} of image {sample.images['rgb']} does not exist" in messages
    assert f"{_json(fresh)} test[" in messages and "lists no mask_path" in messages
    with pytest.raises(DatasetError, match="does not exist"):
        _load(fresh)


def test_malformed_json_names_the_file(fresh):
    _json(fresh, "toy_brick").write_text('{"meta": {"prefix": "toy_brick", "normal_class": "OK"}, "train": [', encoding="utf-8")
    (error,) = _errors(fresh)
    assert error.kind == "bad-json" and error.path == str(_json(fresh, "toy_brick"))
    assert "is not readable JSON" in error.message and "line 1" in error.message


def test_malformed_entries_name_the_file_split_and_index(fresh):
    document = json.loads(_json(fresh).read_text())
    del document["train"][3]["mask_path"]
    document["test"][0]["category"] = "toy_brick"
    _json(fresh).write_text(json.dumps(document))
    messages = sorted(p.message for p in _errors(fresh) if p.kind == "bad-json")
    assert messages == [
        f"{_json(fresh)} test[0]: category is 'toy_brick' in the split file of class 'audiojack'",
        f"{_json(fresh)} train[3]: an entry holds exactly the keys category, anomaly_class, image_path, mask_path; "
        "got ['anomaly_class', 'category', 'image_path']",
    ]
    _json(fresh).write_text(json.dumps({"meta": {"prefix": "audiojack"}, "train": [], "test": []}))
    (error,) = [p for p in _errors(fresh) if p.kind == "bad-json"]
    assert error.message.endswith("'meta' must hold the strings 'prefix' and 'normal_class'")


def test_image_without_a_view_tag_is_named(fresh):
    document = json.loads(_json(fresh).read_text())
    entry = document["train"][0]
    renamed = entry["image_path"].replace("_C1_", "_C7_")
    (fresh.root / "realiad_1024" / "audiojack" / entry["image_path"]).rename(fresh.root / "realiad_1024" / "audiojack" / renamed)
    entry["image_path"] = renamed
    _json(fresh).write_text(json.dumps(document))
    bad = [p for p in _errors(fresh) if p.kind == "bad-view"]
    assert len(bad) == 1 and bad[0].path.endswith(renamed) and "has no camera view tag _C1_ .. _C5_" in bad[0].message
    assert f"{_json(fresh)} train[0]" in bad[0].message


def test_missing_json_missing_image_and_misnamed_class_folder(fresh):
    first = _load(fresh).samples[0]
    first.images["rgb"].unlink()
    _json(fresh, "toy_brick").unlink()
    kinds = {p.kind: p for p in _errors(fresh)}
    assert kinds["missing-json"].path == str(_json(fresh, "toy_brick")) and "split file" in kinds["missing-json"].message
    assert kinds["missing-image"].path == str(first.images["rgb"])
    (fresh.root / "realiad_1024" / "audiojack").rename(fresh.root / "realiad_1024" / "Audiojack")
    kinds = {p.kind: p for p in _errors(fresh)}
    assert kinds["missing-class"].path == str(fresh.root / "realiad_1024" / "audiojack")
    assert kinds["unknown-folder"].path == str(fresh.root / "realiad_1024" / "Audiojack")
    assert "is neither a chosen class nor named by a realiad_jsons JSON file" in kinds["unknown-folder"].message


def test_missing_json_folder_names_both_places_it_may_be(fresh):
    shutil.rmtree(fresh.root / "realiad_jsons")
    (error,) = _errors(fresh)
    assert error.kind == "missing-folder"
    assert str(fresh.root / "realiad_jsons" / "realiad_jsons") in error.message and str(fresh.root / "realiad_jsons") in error.message


def test_card_lists_the_thirty_classes_and_leaves_counts_unverified():
    card = get_card("real_iad")
    assert card.layout == "real_iad" and card.modalities == ("rgb",) and len(card.classes) == 30
    assert {"audiojack", "toy_brick", "transistor1", "zipper"} <= set(card.classes)
    assert card.counts_verified is False and not any(c.counts for c in card.classes.values())
    assert "CC BY-NC-SA 4.0" in card.licence and "Apache 2.0" in card.licence and "CVPR 2024" in card.citation


def test_an_image_listed_twice_or_a_mask_of_another_image_is_named(fresh):
    document = json.loads(_json(fresh).read_text())
    document["test"].append(dict(document["train"][0]))  # a training view listed again in the test split
    anomalous = [e for e in document["test"] if e["mask_path"]]
    anomalous[0]["mask_path"] = anomalous[1]["mask_path"]
    _json(fresh).write_text(json.dumps(document))
    kinds = {p.kind: p for p in _errors(fresh)}
    assert set(kinds) == {"bad-json", "mask-stem-mismatch"}
    assert "is listed twice (first at " in kinds["bad-json"].message and f"{_json(fresh)} train[0])" in kinds["bad-json"].message
    assert kinds["mask-stem-mismatch"].path.endswith(anomalous[1]["mask_path"])
