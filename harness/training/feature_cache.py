"""Frozen-backbone features computed once per (dataset, backbone, weights, levels, resolution, dtype).

Features are stored on disk under a content-derived key, so every later run of any method that
uses the same backbone reads them instead of running the backbone again. The cache root is
$HARNESS_FEATURE_CACHE, else $HARNESS_CACHE/features (put it on shared storage on a cluster).

Scale (issue 14): an entry is one pre-allocated ``.npy`` file per level (``open_memmap``), filled
batch by batch as the backbone runs, so extraction holds one batch in memory whatever the dataset
size; the files are written into a hidden staging folder and published by one atomic rename, so a
reader never sees a half-written entry. Entries are read back memory-mapped: a batch copies only
its own rows (upcast to float32, what every method consumed before).

Precision (``FeatureKey.dtype``): ``float32`` stores the backbone's output exactly; ``float16``
halves the disk and page-cache footprint and rounds each value to the nearest float16: relative
error at most 2**-11 (4.9e-4) for magnitudes of at least 2**-14 (6.1e-5), absolute error at most
2**-25 (3.0e-8) below that (measured on packaged lite0 features: tests/test_feature_cache_scale.py).
A value beyond float16's range (65504) is an error, never a silent infinity.

Resolution (``FeatureKey.alignment``): a method whose first step maps every level to one grid
(the UniAD family's neck: bilinear, align_corners=True, to the coarsest level) may pass that step
as a ``LevelAlignment``; the cache stores its output, and the neck, finding every level already at
its grid, computes bit-identically the same tokens (checked in the tests) from far fewer bytes.

Concurrent trials (one node, or many on shared storage): the first to miss an entry creates
``<entry>.lock`` with O_CREAT|O_EXCL (host, pid, staging folder, heartbeat) and extracts; others
wait for the entry to be published and read it. The owner rewrites its heartbeat every
``heartbeat_seconds``; a lock whose heartbeat a waiter sees unchanged for ``stale_after`` seconds
of its own clock (no cross-node clock comparison), or whose owner is a dead process on the
waiter's host, is taken over. In the rare race where two waiters take over one stale lock both
extract, and the atomic publish keeps one copy. A damaged entry (a truncated level file, bad
meta.json) is discarded, with a warning naming it, and rebuilt; other entries are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data.sample import Sample
from harness.paths import cache_root
from harness.training.inputs import image_tensor

CACHE_FORMAT_VERSION = 2
EXTRACTION_BATCH = 16
STORAGE_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class FeatureKey:
    dataset: str
    dataset_fingerprint: str
    backbone: str
    weights_id: str
    levels: tuple[int, ...]
    image_size: int
    dtype: str = "float32"  # the storage precision, one of STORAGE_DTYPES
    alignment: str = ""  # the name of the LevelAlignment applied before storing; "": the raw levels

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"feature cache dtype {self.dtype!r} is not supported; expected one of {', '.join(STORAGE_DTYPES)}")

    def digest(self) -> str:
        payload = json.dumps({"format": CACHE_FORMAT_VERSION, **self.__dict__}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class LevelAlignment:
    """A method's exact first step on its levels, done once at extraction instead of every epoch
    (e.g. resizing every level to the one grid a neck reads): ``apply`` maps one batch's list of
    (B, C_l, H_l, W_l) float32 tensors to another such list, image by image (the batch must not
    matter); ``name`` says what it does and goes into the cache key."""

    name: str
    apply: Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class FeatureSet:
    """Features of one list of samples: one (N, C, H, W) array per level (stored dtype, often a
    read-only memory map), row i is sample_ids[i]; ``rows`` gives float32 tensors."""

    sample_ids: list[str]
    levels: list[np.ndarray]

    def rows(self, indices: Sequence[int]) -> list[torch.Tensor]:
        index = np.asarray(indices)
        return [torch.from_numpy(np.ascontiguousarray(level[index], dtype=np.float32)) for level in self.levels]


def feature_batches(samples: Sequence[Sample], backbone, image_size: int, progress=None, align: LevelAlignment | None = None) -> Iterator[list[np.ndarray]]:
    """The frozen backbone's float32 levels (aligned if asked), one list per fixed-size batch (the same batching cached or not)."""
    device = next(backbone.parameters()).device
    # channels_last halves the CPU time of the depthwise convolutions (measured on lite0 at 160 px)
    backbone = backbone.to(memory_format=torch.channels_last)
    for start in range(0, len(samples), EXTRACTION_BATCH):
        batch = samples[start : start + EXTRACTION_BATCH]
        images = torch.stack([image_tensor(s, image_size, backbone.mean, backbone.std) for s in batch])
        with torch.inference_mode():
            levels = [level.float() for level in backbone(images.to(device).contiguous(memory_format=torch.channels_last))]
            levels = align.apply(levels) if align is not None else levels
        yield [level.cpu().numpy() for level in levels]
        if progress is not None:
            progress(len(batch))


def extract_features(samples: Sequence[Sample], backbone, image_size: int, progress=None, dtype: str = "float32",
                     align: LevelAlignment | None = None) -> FeatureSet:
    """All levels in memory (uncached runs, prediction, component masks): stored as the cache stores them."""
    batches = [[_stored(level, dtype) for level in levels] for levels in feature_batches(samples, backbone, image_size, progress, align)]
    return FeatureSet([s.sample_id for s in samples], [np.concatenate(level) for level in zip(*batches)])


def _stored(level: np.ndarray, dtype: str) -> np.ndarray:
    """One batch of one level as C-contiguous ``dtype``; an overflow to infinity is an error."""
    stored = np.ascontiguousarray(level, dtype=dtype)
    if dtype == "float16" and not np.isfinite(stored).all() and np.isfinite(level).all():
        raise ValueError(
            f"backbone features reach {float(np.abs(level).max()):.4g}, beyond float16's range ({FLOAT16_MAX:.0f}); "
            "store this backbone's features as float32"
        )
    return stored


class LevelFiles:
    """One pre-allocated (N, C, H, W) .npy file per level, filled in row order with positional writes
    (no mapping of the file stays in this process, so its memory holds one batch)."""

    def __init__(self, folder: Path, rows: int, first_batch: Sequence[np.ndarray], dtype: str):
        self.paths, self.offsets, self.row = [], [], 0
        for i, level in enumerate(first_batch):
            path = folder / f"level{i}.npy"
            header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, *level.shape[1:]))
            self.offsets.append(header.offset)
            del header  # the file now has its header and its full (sparse) size
            self.paths.append(path)
        self.shapes = [[rows, *level.shape[1:]] for level in first_batch]
        self.descriptors = [os.open(path, os.O_WRONLY) for path in self.paths]

    def write(self, batch: Sequence[np.ndarray]) -> None:
        for descriptor, offset, level in zip(self.descriptors, self.offsets, batch):
            data, position = memoryview(level).cast("B"), offset + self.row * level[0].nbytes
            while data:
                written = os.pwrite(descriptor, data, position)
                data, position = data[written:], position + written
        self.row += len(batch[0])

    def close(self) -> None:
        for descriptor in self.descriptors:
            os.fsync(descriptor)  # on shared storage: the data is on the server before the entry is published
            os.close(descriptor)
        self.descriptors = []


def write_features(folder: Path, samples: Sequence[Sample], backbone, image_size: int, dtype: str, progress=None,
                   align: LevelAlignment | None = None) -> list[list[int]]:
    """Stream the samples' features into level files in ``folder``; returns the level shapes."""
    if not samples:
        raise ValueError("no samples to extract features from: the split is empty")
    files = None
    try:
        for levels in feature_batches(samples, backbone, image_size, progress, align):
            if files is None:
                files = LevelFiles(folder, len(samples), levels, dtype)
            files.write([_stored(level, dtype) for level in levels])  # gone before the next batch is computed
    finally:
        if files is not None:
            files.close()
    return files.shapes


class DamagedEntry(Exception):
    """A published entry that cannot be read as its meta.json describes."""


def read_entry(folder: Path, key: FeatureKey, sample_ids: Sequence[str]) -> FeatureSet:
    """The entry's levels as read-only memory maps, after checking them against meta.json and the key."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shapes = [tuple(shape) for shape in meta["shapes"]]
        levels = [np.load(folder / f"level{i}.npy", mmap_mode="r") for i in range(len(shapes))]
        described = meta["format"] == CACHE_FORMAT_VERSION and meta["sample_ids"] == list(sample_ids)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedEntry(f"{type(error).__name__}: {error}") from error
    if not described:
        raise DamagedEntry("meta.json does not describe this key's samples")
    for i, (level, shape) in enumerate(zip(levels, shapes)):
        if level.shape != shape or level.dtype != np.dtype(key.dtype):
            raise DamagedEntry(f"level{i}.npy holds {level.dtype} {level.shape}, meta.json says {key.dtype} {shape}")
    return FeatureSet(list(sample_ids), levels)


class FeatureCache:
    def __init__(self, root: Path | None = None, *, stale_after: float = 60.0, heartbeat_seconds: float = 5.0, poll_seconds: float = 0.5):
        if root is None:
            root = os.environ.get("HARNESS_FEATURE_CACHE") or cache_root() / "features"
        self.root = Path(root)
        self.stale_after, self.heartbeat_seconds, self.poll_seconds = stale_after, heartbeat_seconds, poll_seconds

    def entry(self, key: FeatureKey, split: str, sample_ids: Sequence[str]) -> Path:
        ids_digest = hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()[:12]
        return self.root / key.digest() / f"{split}-{ids_digest}"

    def load(self, key: FeatureKey, split: str, sample_ids: Sequence[str], *, discard_damaged: bool = False) -> FeatureSet | None:
        """The published entry, or None when there is none or it is damaged (then discarded, with a
        warning, if ``discard_damaged``: only the lock's holder does that, so no fresh entry is lost)."""
        folder = self.entry(key, split, sample_ids)
        if not folder.exists():
            return None
        try:
            return read_entry(folder, key, sample_ids)
        except DamagedEntry as damage:
            if discard_damaged:
                warnings.warn(f"feature cache entry {folder} is damaged ({damage}); discarding it to rebuild", stacklevel=2)
                discard(folder)
            return None

    def build(self, key: FeatureKey, split: str, samples: Sequence[Sample], backbone, staging: Path, progress=None,
              align: LevelAlignment | None = None) -> Path:
        """Extract into ``staging`` (inside the key's folder) and publish it by renaming it into place."""
        ids = [s.sample_id for s in samples]
        target = self.entry(key, split, ids)
        try:
            shapes = write_features(staging, samples, backbone, key.image_size, key.dtype, progress, align)
            meta = {"format": CACHE_FORMAT_VERSION, "key": key.__dict__, "sample_ids": ids, "shapes": shapes}
            (staging / "meta.json").write_text(json.dumps(meta, default=list))
            os.rename(staging, target)
        except OSError:
            if not (target / "meta.json").exists():
                raise  # not the benign race where another worker renamed the same entry first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @contextmanager
    def building(self, key: FeatureKey, split: str, sample_ids: Sequence[str], on_wait=None):
        """Hold the entry's lock for the block (waiting for a live owner to finish); yields a fresh staging folder."""
        target = self.entry(key, split, sample_ids)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=target.parent))
        lock = EntryLock(target.with_name(target.name + ".lock"), staging, self)
        try:
            lock.acquire(on_wait)
            try:
                yield staging
            finally:
                lock.release()
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def discard(folder: Path) -> None:
    """Remove an entry: renamed aside first, so no reader ever sees it half deleted."""
    aside = folder.with_name(f".discarded-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, aside)
    except OSError:
        return  # already discarded by another worker
    shutil.rmtree(aside, ignore_errors=True)


class EntryLock:
    """``<entry>.lock``: created with O_CREAT|O_EXCL, kept alive by a heartbeat thread, taken over when stale."""

    def __init__(self, path: Path, staging: Path, cache: FeatureCache):
        self.path, self.staging, self.cache = path, staging, cache
        self.token = uuid.uuid4().hex
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def content(self) -> str:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "staging": str(self.staging)}
        return json.dumps({**owner, "heartbeat": time.time()})

    def acquire(self, on_wait=None) -> None:
        """Create the lock, waiting while a live owner holds it; a stale one is taken over."""
        seen, seen_at, announced = None, time.monotonic(), None
        while not self._create():
            current = read_lock(self.path)
            if current != seen:  # a heartbeat (or a new owner): the owner is alive
                seen, seen_at = current, time.monotonic()
            elif current is not None and (time.monotonic() - seen_at > self.cache.stale_after or owner_is_dead(current)):
                take_over(self.path, current)
                continue
            token = lock_owner(current or "{}").get("token")
            if on_wait is not None and token not in (None, announced):
                announced = token
                on_wait(lock_owner(current))
            time.sleep(self.cache.poll_seconds)
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self.thread.start()

    def _create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(self.content())
        return True

    def _beat(self) -> None:
        while not self.stopped.wait(self.cache.heartbeat_seconds):
            if not self._held():
                return  # taken over: the atomic publish still keeps one copy
            self.path.write_text(self.content())

    def release(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        if self._held():
            self.path.unlink(missing_ok=True)

    def _held(self) -> bool:
        """The lock file names this lock as its owner (not taken over by another worker)."""
        return lock_owner(read_lock(self.path) or "{}").get("token") == self.token


def read_lock(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def lock_owner(content: str) -> dict:
    """The lock's JSON, or {} while it is being rewritten (a partial read)."""
    try:
        owner = json.loads(content)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def owner_is_dead(content: str) -> bool:
    """True only for an owner on this host whose process no longer exists."""
    owner = lock_owner(content)
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def take_over(path: Path, content: str) -> None:
    """Remove a stale lock (renamed aside first, so only one waiter removes it) and its owner's staging folder."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    aside.unlink(missing_ok=True)
    staging = lock_owner(content).get("staging")
    if staging and Path(staging).parent == path.parent:
        shutil.rmtree(staging, ignore_errors=True)
    warnings.warn(f"feature cache lock {path} was stale (owner {lock_owner(content) or content!r}); taking it over", stacklevel=3)


def cached_features(
    key: FeatureKey,
    split: str,
    samples: Sequence[Sample],
    backbone,
    *,
    cache: FeatureCache | None,
    progress=None,
    on_wait: Callable[[dict], None] | None = None,
    align: LevelAlignment | None = None,
) -> tuple[FeatureSet, bool]:
    """Features for the samples, from the cache when present (or once another worker has published
    them). Returns (features, was_cached). ``on_wait(owner)`` is called when another worker holds the
    lock; ``align`` (named by ``key.alignment``) is applied to the levels before they are stored."""
    if key.alignment != (align.name if align is not None else ""):
        raise ValueError(f"feature key alignment {key.alignment!r} does not name the alignment given ({align.name if align else None!r})")
    if cache is None:
        return extract_features(samples, backbone, key.image_size, progress, key.dtype, align), False
    ids = [s.sample_id for s in samples]
    hit = cache.load(key, split, ids)
    if hit is not None:
        return hit, True
    with cache.building(key, split, ids, on_wait) as staging:
        hit = cache.load(key, split, ids, discard_damaged=True)  # published while we waited for the lock?
        if hit is not None:
            return hit, True
        cache.build(key, split, samples, backbone, staging, progress, align)
    features = cache.load(key, split, ids)
    if features is None:
        raise RuntimeError(f"feature cache entry {cache.entry(key, split, ids)} was published but cannot be read back")
    return features, False
