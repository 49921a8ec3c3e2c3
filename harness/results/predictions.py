"""The per-run prediction artefact: image score and float16 anomaly map per sample, keyed by sample_id.

Metrics can be recomputed from it under a new metric version without retraining
(datasets-and-metrics.md section 7.8). One Parquet file (schema ``results.schema.PREDICTIONS``)
whose ``map`` column holds the map's float16 bytes, row-major, with ``height`` and ``width``.
Writing appends row groups through a ParquetWriter to a hidden temporary file that is renamed
into place at the end, so memory stays bounded and a killed writer leaves nothing visible.
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

from harness.results.schema import PREDICTIONS, with_version

_FIELDS = ("sample_id", "class_name", "defect_type", "label", "score")


@dataclass(frozen=True)
class Prediction:
    sample_id: str
    class_name: str
    defect_type: str
    label: int
    score: float
    map: np.ndarray  # float16, height x width

    def as_row(self) -> dict:
        return {name: getattr(self, name) for name in (*_FIELDS, "map")}


class PredictionWriter:
    """Appends predictions in row groups; ``close()`` publishes the file, an exception discards it."""

    def __init__(self, path: str | Path, batch_size: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self._writer = pq.ParquetWriter(str(self._temporary), with_version(PREDICTIONS))
        self._pending: list[dict] = []
        self.batch_size = batch_size
        self.count = 0

    def add(self, row: dict | Prediction) -> None:
        if isinstance(row, Prediction):
            row = row.as_row()
        missing = [name for name in (*_FIELDS, "map") if name not in row]
        if missing:
            raise ValueError(f"prediction for {row.get('sample_id')!r} lacks {missing}; expected {(*_FIELDS, 'map')}")
        self._pending.append(row)
        self.count += 1
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        maps = [np.ascontiguousarray(np.asarray(row["map"], dtype=np.float16)) for row in self._pending]
        for row, anomaly_map in zip(self._pending, maps):
            if anomaly_map.ndim != 2:
                raise ValueError(f"prediction {row['sample_id']!r}: map has shape {anomaly_map.shape}; expected (height, width)")
        columns = {name: [row[name] for row in self._pending] for name in _FIELDS}
        columns["label"] = [int(v) for v in columns["label"]]
        columns["score"] = [float(v) for v in columns["score"]]
        columns["height"] = [m.shape[0] for m in maps]
        columns["width"] = [m.shape[1] for m in maps]
        columns["map"] = [m.tobytes() for m in maps]
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


def write_predictions(path: str | Path, rows: Iterable[dict | Prediction], batch_size: int = 256) -> Path:
    """Write predictions (dicts with sample_id, class_name, defect_type, label, score, map) atomically."""
    with PredictionWriter(path, batch_size) as writer:
        for row in rows:
            writer.add(row)
    return Path(path)


def read_predictions(path: str | Path, batch_size: int = 64, sample_ids: set[str] | None = None) -> Iterator[Prediction]:
    """Stream predictions from a file, or from every visible ``*.parquet`` part in a folder, in file order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no prediction artefact here (expected a .parquet file or a folder of parts)")
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_size):
            data = batch.to_pydict()
            for i, sample_id in enumerate(data["sample_id"]):
                if sample_ids is not None and sample_id not in sample_ids:
                    continue
                shape = (data["height"][i], data["width"][i])
                yield Prediction(
                    sample_id=sample_id,
                    class_name=data["class_name"][i],
                    defect_type=data["defect_type"][i],
                    label=data["label"][i],
                    score=data["score"][i],
                    map=np.frombuffer(data["map"][i], dtype=np.float16).reshape(shape),
                )
