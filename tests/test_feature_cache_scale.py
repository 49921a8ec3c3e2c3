"""The feature cache at scale (issue 14): streaming writes, float16 storage, locks, damaged entries."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.backbones import create_backbone
from harness.data.sample import Sample
from harness.training.feature_cache import (
    EXTRACTION_BATCH,
    EntryLock,
    FeatureCache,
    FeatureKey,
    LevelAlignment,
    cached_features,
    extract_features,
    owner_is_dead,
)

LEVELS = [1, 2, 3]


def _samples(folder: Path, count: int, size: int = 64, seed: int = 0) -> list[Sample]:
    """``count`` random-noise PNGs as training samples of one class."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        samples.append(Sample("synthetic", "noise", "train", "good", f"noise/train/good/{i:03d}", 0, {"rgb": path}))
    return samples


def _photo_samples(folder: Path) -> list[Sample]:
    """Crops of scikit-image's bundled photographs: real image statistics for real lite0 features."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        samples.append(Sample("photos", name, "train", "good", f"{name}/train/good/000", 0, {"rgb": path}))
    return samples


def _key(dtype: str = "float32", image_size: int = 64, weights_id: str = "random") -> FeatureKey:
    return FeatureKey("synthetic", "fingerprint", "tf_efficientnet_lite0", weights_id, tuple(LEVELS), image_size, dtype)


class ForwardCount:
    """Counts the backbone's forward calls (one per extraction batch)."""

    def __init__(self, backbone):
        self.calls = 0
        backbone.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("tf_efficientnet_lite0", LEVELS, weights="random")


def _peak_while_caching(samples, backbone, root: Path, image_size: int) -> int:
    tracemalloc.start()
    try:
        cached_features(_key(image_size=image_size), "train", samples, backbone, cache=FeatureCache(root))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_while_extracting_does_not_grow_with_the_number_of_images(tmp_path, backbone):
    size = 96
    small, large = _samples(tmp_path / "small", EXTRACTION_BATCH, size), _samples(tmp_path / "large", 4 * EXTRACTION_BATCH, size, seed=1)
    _peak_while_caching(small[:2], backbone, tmp_path / "warm", size)  # first-call allocations (imports, kernels) out of the way
    peak_small = _peak_while_caching(small, backbone, tmp_path / "a", size)
    peak_large = _peak_while_caching(large, backbone, tmp_path / "b", size)
    full_set = sum(level.nbytes for level in extract_features(large, backbone, size).levels)
    assert full_set > 2_000_000  # large enough for growth to show: the old in-memory path held it twice
    assert peak_large < peak_small + full_set / 8, (peak_small, peak_large, full_set)


def _extract_in_process(args: tuple) -> tuple[int, bool, str]:
    """One trial in a spawned process: its own backbone, the shared cache; (forward calls, was_cached, digest)."""
    root, folder, barrier = args
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", LEVELS, weights="random")
    count = ForwardCount(backbone)
    samples = _samples(Path(folder), 2 * EXTRACTION_BATCH)  # the same files and ids in both processes
    barrier.wait()
    features, cached = cached_features(_key(), "train", samples, backbone, cache=FeatureCache(Path(root), poll_seconds=0.05))
    digest = hashlib.sha256(b"".join(np.asarray(level).tobytes() for level in features.levels)).hexdigest()
    return count.calls, cached, digest


def test_two_processes_extract_a_feature_set_once_and_read_the_same_features(tmp_path):
    _samples(tmp_path / "images", 2 * EXTRACTION_BATCH)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            results = pool.map(_extract_in_process, [(str(tmp_path / "cache"), str(tmp_path / "images"), barrier)] * 2)
    calls = sorted(r[0] for r in results)
    assert calls == [0, 2]  # one process ran both batches, the other none
    assert sorted(r[1] for r in results) == [False, True]
    assert results[0][2] == results[1][2]


def test_a_waiting_trial_reuses_the_entry_the_lock_owner_publishes(tmp_path, backbone):
    samples = _samples(tmp_path / "images", 4)
    cache = FeatureCache(tmp_path / "cache", poll_seconds=0.02)
    ids = [s.sample_id for s in samples]
    waiting, result = threading.Event(), {}
    count = ForwardCount(backbone)
    with cache.building(_key(), "train", ids) as staging:
        waiter = threading.Thread(target=lambda: result.update(zip(("features", "cached"), cached_features(
            _key(), "train", samples, backbone, cache=cache, on_wait=lambda owner: waiting.set()))))
        waiter.start()
        assert waiting.wait(60)
        cache.build(_key(), "train", samples, backbone, staging)
    waiter.join(60)
    assert result["cached"] and count.calls == 1  # only the owner's extraction ran the backbone
    assert all(np.asarray(level).shape[0] == 4 for level in result["features"].levels)


def _lock_path(cache: FeatureCache, samples) -> Path:
    entry = cache.entry(_key(), "train", [s.sample_id for s in samples])
    entry.parent.mkdir(parents=True, exist_ok=True)
    return entry.with_name(entry.name + ".lock")


def _dead_pid() -> int:
    process = multiprocessing.get_context("spawn").Process(target=int)
    process.start()
    process.join()
    return process.pid


@pytest.mark.parametrize("owner", ["dead process on this host", "silent owner on another host"])
def test_a_stale_lock_is_taken_over(tmp_path, backbone, owner):
    import socket

    samples = _samples(tmp_path / "images", 2)
    cache = FeatureCache(tmp_path / "cache", stale_after=0.3, poll_seconds=0.02)
    lock = _lock_path(cache, samples)
    orphan = lock.parent / ".train-orphan"
    orphan.mkdir()
    host, pid = (socket.gethostname(), _dead_pid()) if owner.startswith("dead") else ("node-elsewhere", 1)
    lock.write_text(json.dumps({"host": host, "pid": pid, "token": "old", "staging": str(orphan), "heartbeat": 0.0}))
    with pytest.warns(UserWarning, match="stale"):
        features, cached = cached_features(_key(), "train", samples, backbone, cache=cache)
    assert not cached and np.asarray(features.levels[0]).shape[0] == 2
    assert not lock.exists() and not orphan.exists()  # released after publishing; the dead owner's staging removed


def test_only_a_dead_process_on_this_host_counts_as_a_dead_owner(tmp_path):
    import socket

    owner = EntryLock(tmp_path / "entry.lock", tmp_path / "staging", FeatureCache(tmp_path))
    live = owner.content()  # this process
    elsewhere = json.dumps({**json.loads(live), "host": "node-elsewhere", "pid": _dead_pid()})
    dead_here = json.dumps({**json.loads(live), "host": socket.gethostname(), "pid": _dead_pid()})
    assert [owner_is_dead(c) for c in (live, elsewhere, dead_here, "{half-writ")] == [False, False, True, False]


def test_float16_storage_error_on_real_lite0_features_is_within_the_stated_bound(tmp_path):
    samples = _photo_samples(tmp_path / "photos")
    backbone = create_backbone("tf_efficientnet_lite0", LEVELS, weights="packaged")
    exact = extract_features(samples, backbone, 128)
    cache = FeatureCache(tmp_path / "cache")
    stored = {dtype: cached_features(_key(dtype, 128, backbone.weights_id), "train", samples, backbone, cache=cache)[0]
              for dtype in ("float32", "float16")}
    for level, level32, level16 in zip(exact.levels, stored["float32"].levels, stored["float16"].levels):
        np.testing.assert_array_equal(level32, level)  # float32 storage is exact
        assert level16.dtype == np.float16 and level16.nbytes * 2 == level32.nbytes
        error = np.abs(np.asarray(level16, dtype=np.float32) - level)
        normal = np.abs(level) >= 2.0**-14
        assert (error[normal] / np.abs(level[normal])).max() <= 2.0**-11
        assert error[~normal].max(initial=0.0) <= 2.0**-25
        assert 0 < error.max()  # float16 does round: the bound is not vacuous
    assert all(isinstance(level, np.memmap) and not level.flags.writeable for level in stored["float16"].levels)  # read in place
    rows = stored["float16"].rows([1, 3])
    assert all(r.dtype == torch.float32 and r.shape[0] == 2 for r in rows)  # what the methods consumed before


@pytest.mark.parametrize("damage", ["truncated level file", "bad meta"])
def test_a_damaged_entry_is_rebuilt_with_a_warning_and_nothing_else_is_lost(tmp_path, backbone, damage):
    samples = _samples(tmp_path / "images", 3)
    cache = FeatureCache(tmp_path / "cache")
    train, _ = cached_features(_key(), "train", samples, backbone, cache=cache)
    expected = [np.array(level) for level in train.levels]
    cached_features(_key(), "test", samples[:2], backbone, cache=cache)
    entry = cache.entry(_key(), "train", [s.sample_id for s in samples])
    if damage == "bad meta":
        (entry / "meta.json").write_text("{not json")
    else:
        path = entry / "level1.npy"
        os.truncate(path, path.stat().st_size // 2)
    with pytest.warns(UserWarning, match=str(entry)):
        rebuilt, cached = cached_features(_key(), "train", samples, backbone, cache=cache)
    assert not cached
    for level, before in zip(rebuilt.levels, expected):
        np.testing.assert_array_equal(level, before)
    assert cached_features(_key(), "test", samples[:2], backbone, cache=cache)[1]  # the other entry is still there
    assert sorted(p.name for p in entry.parent.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_an_unknown_dtype_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'bfloat16'.*float32, float16"):
        _key("bfloat16")


def _neck_alignment(backbone):
    from methods.blocks.neck import MultiLevelFeatureNeck

    neck = MultiLevelFeatureNeck(backbone.channels, backbone.reductions)
    grid = neck.grid_size(96)
    split = lambda levels: list(torch.split(neck(levels), neck.channels, dim=1))  # noqa: E731
    return neck, LevelAlignment(f"neck grid {grid[0]}x{grid[1]}", split)


def test_levels_stored_at_the_neck_grid_give_the_neck_bit_identical_tokens(tmp_path, backbone):
    samples = _samples(tmp_path / "images", 6, 96)
    neck, alignment = _neck_alignment(backbone)
    raw = extract_features(samples, backbone, 96)
    key = FeatureKey("synthetic", "fingerprint", "tf_efficientnet_lite0", "random", tuple(LEVELS), 96, alignment=alignment.name)
    aligned, _ = cached_features(key, "train", samples, backbone, cache=FeatureCache(tmp_path / "cache"), align=alignment)
    assert [level.shape[-2:] for level in aligned.levels] == [(6, 6)] * 3  # stride 16 at 96 px
    assert sum(level.nbytes for level in aligned.levels) < sum(level.nbytes for level in raw.levels) / 3
    rows = [[0, 1, 2, 3], [4, 5]]  # batches unlike the extraction's: the alignment is per image
    for batch in rows:
        assert torch.equal(neck(aligned.rows(batch)), neck(raw.rows(batch)))


def test_a_key_that_does_not_name_the_alignment_given_is_refused(tmp_path, backbone):
    _, alignment = _neck_alignment(backbone)
    with pytest.raises(ValueError, match="alignment '' does not name the alignment given \\('neck grid 6x6'\\)"):
        cached_features(_key(), "train", _samples(tmp_path, 1), backbone, cache=None, align=alignment)
