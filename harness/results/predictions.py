"""The per-run prediction artefact: image score and anomaly map per sample, keyed by run_id and sample_id.

Metrics can be recomputed from it under a new metric version without retraining
(datasets-and-metrics.md section 7.8). One Parquet file (schema ``results.schema.PREDICTIONS``)
whose ``anomaly_map`` column holds the map's bytes (``map_dtype``, float16), row-major, with
``height`` and ``width``; ``read_maps`` turns them back into arrays. Writing appends row groups
through a ParquetWriter to a hidden temporary file that is renamed into place at the end, so
memory stays bounded and a killed writer leaves nothing visible.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.results.schema import LEGACY_PREDICTION_COLUMNS, PREDICTIONS, with_version

_FIELDS = ("sample_id", "class_name", "defect_type", "label", "score")
MAP_DTYPE = np.dtype(np.float16)


@dataclass(frozen=True)
class Prediction:
    sample_id: str
    class_name: str
    defect_type: str
    label: int
    score: float
    anomaly_map: np.ndarray  # float16, height x width
    run_id: str | None = None

    def as_row(self) -> dict:
        return {name: getattr(self, name) for name in ("run_id", *_FIELDS, "anomaly_map")}


class PredictionWriter:
    """Appends predictions in row groups; ``close()`` publishes the file, an exception discards it.

    With ``run_id`` every row is stamped with it (a worker's part, written before the run id is
    known, leaves it null).
    """

    def __init__(self, path: str | Path, batch_size: int = 256, run_id: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self._writer = pq.ParquetWriter(str(self._temporary), with_version(PREDICTIONS))
        self._pending: list[dict] = []
        self.batch_size = batch_size
        self.run_id = run_id
        self.count = 0

    def add(self, row: dict | Prediction) -> None:
        if isinstance(row, Prediction):
            row = row.as_row()
        missing = [name for name in (*_FIELDS, "anomaly_map") if name not in row]
        if missing:
            raise ValueError(
                f"prediction for {row.get('sample_id')!r} lacks {missing}; expected {(*_FIELDS, 'anomaly_map')}"
            )
        self._pending.append(row)
        self.count += 1
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        maps = [np.ascontiguousarray(np.asarray(row["anomaly_map"], dtype=MAP_DTYPE)) for row in self._pending]
        for row, anomaly_map in zip(self._pending, maps):
            if anomaly_map.ndim != 2:
                raise ValueError(
                    f"prediction {row['sample_id']!r}: map has shape {anomaly_map.shape}; expected (height, width)"
                )
        columns = {name: [row[name] for row in self._pending] for name in _FIELDS}
        columns["run_id"] = [self.run_id or row.get("run_id") for row in self._pending]
        columns["label"] = [int(v) for v in columns["label"]]
        columns["score"] = [float(v) for v in columns["score"]]
        columns["height"] = [m.shape[0] for m in maps]
        columns["width"] = [m.shape[1] for m in maps]
        columns["map_dtype"] = [MAP_DTYPE.name] * len(maps)
        columns["anomaly_map"] = [m.tobytes() for m in maps]
        self._writer.write_table(pa.Table.from_pydict(columns, schema=with_version(PREDICTIONS)))
        self._pending = []

    def close(self) -> Path:
        self._flush()
        self._writer.close()
        os.replace(self._temporary, self.path)
        return self.path

    def discard(self) -> None:
        self._writer.close()
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_predictions(
    path: str | Path, rows: Iterable[dict | Prediction], batch_size: int = 256, run_id: str | None = None
) -> Path:
    """Write predictions (dicts with sample_id, class_name, defect_type, label, score, anomaly_map) atomically."""
    with PredictionWriter(path, batch_size, run_id) as writer:
        for row in rows:
            writer.add(row)
    return Path(path)


def prediction_files(path: str | Path) -> list[Path]:
    """A prediction file, or every visible ``*.parquet`` part of a folder, in name order."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{path}: no prediction artefact here (expected a .parquet file or a folder of parts)")


def read_predictions(
    path: str | Path, batch_size: int = 64, sample_ids: set[str] | None = None, run_id: str | None = None
) -> Iterator[Prediction]:
    """Stream predictions from a file or a folder of parts, in file order; ``run_id`` keeps that run's rows.

    Rows written before predictions carried a run id count as the run their file is named after.
    """
    for file in prediction_files(path):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_size):
            data = _current_columns(batch.to_pydict())
            for i, sample_id in enumerate(data["sample_id"]):
                row_run = data["run_id"][i]
                if sample_ids is not None and sample_id not in sample_ids:
                    continue
                if run_id is not None and (row_run or file.stem) != run_id:
                    continue
                yield Prediction(
                    sample_id=sample_id,
                    class_name=data["class_name"][i],
                    defect_type=data["defect_type"][i],
                    label=data["label"][i],
                    score=data["score"][i],
                    anomaly_map=decode_map(data["anomaly_map"][i], data["map_dtype"][i], data["height"][i], data["width"][i]),
                    run_id=row_run,
                )


def decode_map(raw: bytes, dtype: str | None, height: int, width: int) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.dtype(dtype or MAP_DTYPE)).reshape(height, width)


def read_maps(store_or_path, run_id: str) -> dict[str, np.ndarray]:
    """One run's anomaly maps as (height, width) float16 arrays, keyed by sample id.

    ``store_or_path``: a ResultStore, a result store's root folder, or a predictions file or folder
    (rows of other runs are left out). A KeyError names the run when it has no maps there.
    """
    location = _predictions_location(store_or_path, run_id)
    maps = {p.sample_id: p.anomaly_map for p in read_predictions(location, run_id=run_id)}
    if not maps:
        raise KeyError(f"no anomaly maps of run {run_id!r} in {location}")
    return maps


def _predictions_location(store_or_path, run_id: str) -> Path:
    if hasattr(store_or_path, "predictions_path"):
        return store_or_path.predictions_path(run_id)
    path = Path(store_or_path)
    if (path / "predictions").is_dir():  # a result store's root
        return path / "predictions" / f"{run_id}.parquet"
    return path


def _current_columns(data: dict) -> dict:
    """Columns under today's names, with the ones older files lack filled with None."""
    for old, new in LEGACY_PREDICTION_COLUMNS.items():
        if old in data and new not in data:
            data[new] = data.pop(old)
    length = len(data["sample_id"])
    for name in PREDICTIONS.names:
        data.setdefault(name, [None] * length)
    return data
