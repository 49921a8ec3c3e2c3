"""`harness datasets`: listing the cards and verifying the four official fixture layouts.

Acceptance: verify reports the right counts on each fixture layout and, on fixtures with a
missing mask, a misnamed class folder or a corrupt image, exits non-zero naming the file.
Most runs call the CLI entry point in-process (the same code path as the console script, without
paying the torch import per run); two run the installed console script as a real subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness.cli import main
from harness.data.fixtures import write_fixture

LAYOUTS = ("mvtec_ad", "visa", "mvtec_loco", "mvtec_3d")
VARIANTS = ("missing_mask", "misnamed_class", "corrupt_image")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables must not wrap paths in captured output


def _verify(capsys, info, *extra):
    card = info.write_card(info.root.parent / f"{info.root.name}.card.yaml")
    code = main(["datasets", "verify", str(info.root), "--dataset", info.dataset, "--expect", str(card), *extra])
    return code, capsys.readouterr().out


def _rows(output: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(class, split, defect) -> (found, expected) from the verify table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) >= 5 and cells[3].isdigit() and cells[4].isdigit():
            rows[(cells[0], cells[1], cells[2])] = (int(cells[3]), int(cells[4]))
    return rows


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_reports_the_right_counts(tmp_path, capsys, layout):
    info = write_fixture(layout, tmp_path / layout)
    code, out = _verify(capsys, info)
    assert code == 0, out
    rows = _rows(out)
    expected = {(c, s, d): n for c, per in info.counts.items() for s, dd in per.items() for d, n in dd.items()}
    assert rows == {key: (n, n) for key, n in expected.items()}
    assert f"{sum(expected.values())} samples" in out and "OK" in out and "MISMATCH" not in out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_fails_naming_the_broken_file(tmp_path, capsys, layout, variant):
    info = write_fixture(layout, tmp_path / layout, variant=variant)
    code, out = _verify(capsys, info)
    assert code == 1, out
    problems = [line for line in out.splitlines() if line.startswith("problem")]
    assert any(str(info.broken) in line for line in problems), out


def test_no_pixels_skips_decoding_so_a_corrupt_image_passes(tmp_path, capsys):
    info = write_fixture("mvtec_ad", tmp_path / "ad", variant="corrupt_image")
    code, out = _verify(capsys, info, "--no-pixels")
    assert code == 0 and "0 files decoded" in out


def test_count_mismatch_against_the_bundled_card(tmp_path, capsys):
    info = write_fixture("mvtec_loco", tmp_path / "loco")
    code = main(["datasets", "verify", str(info.root), "--dataset", "mvtec_loco", "--classes", "pushpins", "--no-pixels"])
    out = capsys.readouterr().out
    assert code == 1
    assert _rows(out)[("pushpins", "train", "good")] == (3, 372)
    assert "class 'pushpins', split 'validation', defect 'good': found 2 image(s)" in out
    assert "breakfast_box" not in "".join(line for line in out.splitlines() if line.startswith("problem"))


def test_generic_reports_discovered_classes(tmp_path, capsys):
    info = write_fixture("generic", tmp_path / "mine")
    code = main(["datasets", "verify", str(info.root), "--dataset", "generic"])
    out = capsys.readouterr().out
    assert code == 0 and "gear" in out and "widget" in out and "OK" in out


def test_list_and_show(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("mvtec_ad", "visa", "mvtec_loco", "mvtec_3d"):
        assert name in out
    assert main(["datasets", "show", "visa"]) == 0
    out = capsys.readouterr().out
    assert "pipe_fryum" in out and "CC BY 4.0" in out
    assert main(["datasets", "show", "nope"]) == 1
    assert "known datasets" in capsys.readouterr().out


def _console_script(*args):
    harness = os.path.join(os.path.dirname(sys.executable), "harness")
    command = [harness] if os.path.exists(harness) else [sys.executable, "-m", "harness.cli"]
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)


def test_console_script_fixture_then_verify(tmp_path):
    root = tmp_path / "loco"
    made = _console_script("datasets", "fixture", "mvtec_loco", str(root))
    assert made.returncode == 0, made.stderr
    result = _console_script("datasets", "verify", str(root), "--dataset", "mvtec_loco", "--expect", str(root / "expected_card.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _rows(result.stdout)[("pushpins", "validation", "good")] == (2, 2)


def test_console_script_exits_non_zero_on_missing_mask(tmp_path):
    info = write_fixture("mvtec_3d", tmp_path / "3d", variant="missing_mask")
    card = info.write_card(tmp_path / "3d.card.yaml")
    result = _console_script("datasets", "verify", str(info.root), "--dataset", "mvtec_3d", "--expect", str(card))
    assert result.returncode == 1
    assert str(info.broken) in result.stdout and "missing-mask" in result.stdout
