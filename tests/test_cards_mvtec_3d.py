"""The MVTec 3D-AD card against the dataset paper's statistics table (arXiv:2112.09045v1, Table 1)
and the defect folders of the released archive, and how a verified card judges the small fixture."""

from __future__ import annotations

from harness.data.cards import GOOD
from harness.data.fixtures import write_fixture
from harness.data.registry import get_card
from harness.data.verify import verify_dataset

# class -> (train, validation, test good, test anomalous), as printed in the paper's Table 1
PAPER_TABLE = {
    "bagel": (244, 22, 22, 88),
    "cable_gland": (223, 23, 21, 87),
    "carrot": (286, 29, 27, 132),
    "cookie": (210, 22, 28, 103),
    "dowel": (288, 34, 26, 104),
    "foam": (236, 27, 20, 80),
    "peach": (361, 42, 26, 106),
    "potato": (300, 33, 22, 92),
    "rope": (298, 33, 32, 69),
    "tire": (210, 29, 25, 87),
}
PAPER_TOTALS = {"scans": 4147, "train": 2656, "validation": 294, "test_good": 249, "test_anomalous": 948}

# the defect folders under <class>/test/ in the released archive
RELEASED_DEFECT_FOLDERS = {
    "bagel": {"combined", "contamination", "crack", "hole"},
    "cable_gland": {"bent", "cut", "hole", "thread"},
    "carrot": {"combined", "contamination", "crack", "cut", "hole"},
    "cookie": {"combined", "contamination", "crack", "hole"},
    "dowel": {"bent", "combined", "contamination", "cut"},
    "foam": {"color", "combined", "contamination", "cut"},
    "peach": {"combined", "contamination", "cut", "hole"},
    "potato": {"combined", "contamination", "cut", "hole"},
    "rope": {"contamination", "cut", "open"},
    "tire": {"combined", "contamination", "cut", "hole"},
}


def _row(counts: dict[str, dict[str, int]]) -> tuple[int, int, int, int]:
    test = counts["test"]
    return (counts["train"][GOOD], counts["validation"][GOOD], test[GOOD], sum(n for d, n in test.items() if d != GOOD))


def test_every_class_matches_the_paper_table_row():
    card = get_card("mvtec_3d")
    assert card.counts_verified
    assert {name: _row(c.counts) for name, c in card.classes.items()} == PAPER_TABLE


def test_card_totals_are_the_papers_totals():
    rows = [_row(c.counts) for c in get_card("mvtec_3d").classes.values()]
    train, validation, good, anomalous = (sum(column) for column in zip(*rows))
    assert (train, validation, good, anomalous) == (PAPER_TOTALS["train"], PAPER_TOTALS["validation"],
                                                    PAPER_TOTALS["test_good"], PAPER_TOTALS["test_anomalous"])
    assert train + validation + good + anomalous == PAPER_TOTALS["scans"]


def test_every_class_lists_the_released_defect_folders_and_normal_only_train_and_validation():
    card = get_card("mvtec_3d")
    for name, cls in card.classes.items():
        assert set(cls.counts["test"]) - {GOOD} == RELEASED_DEFECT_FOLDERS[name], name
        assert set(cls.counts["train"]) == set(cls.counts["validation"]) == {GOOD}, name
        assert all(n > 0 for n in cls.counts["test"].values()), name
    assert sum(len(folders) for folders in RELEASED_DEFECT_FOLDERS.values()) == 40


def test_the_fixture_against_the_verified_card_fails_with_the_cards_numbers(tmp_path):
    info = write_fixture("mvtec_3d", tmp_path / "3d")
    report = verify_dataset("mvtec_3d", info.root, classes=["bagel", "foam"], check_pixels=False)
    mismatches = {(p.class_name, p.split, p.defect_type): p.message for p in report.errors if p.kind == "count-mismatch"}
    assert not report.ok and not report.warnings
    assert "expected 244" in mismatches[("bagel", "train", GOOD)]
    assert "found 0 image(s)" in mismatches[("bagel", "test", "combined")]  # a card folder the fixture lacks
    assert "expected 20" in mismatches[("foam", "test", "color")]


def test_the_fixture_with_its_own_counts_still_verifies(tmp_path):
    info = write_fixture("mvtec_3d", tmp_path / "3d")
    report = verify_dataset("mvtec_3d", info.root, expected=info.counts)
    assert report.ok and not report.warnings
    assert report.counts["bagel"]["validation"][GOOD] == info.counts["bagel"]["validation"][GOOD]
