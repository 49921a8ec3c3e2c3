"""The one result writer and reader: a directory of Parquet tables (issue #5, items 4, 5 and 9).

Layout under the store root::

    runs/<run_id>.parquet            one row; status "complete" is the commit marker of a run
    metrics/<run_id>.parquet         detail tables, one file per run
    sample_scores/<run_id>.parquet
    routing/<run_id>.parquet
    trials/<sweep>.parquet           the expanded trial list of a sweep (for missing cells)
    predictions/<run_id>.parquet     per-sample scores and float16 maps (results.predictions)
    checkpoints/<run_id>.pt          the final model state (sweep retention ``checkpoints: last``)

Every file is written under a hidden temporary name in its own directory and renamed into place,
so a reader never sees half a file and concurrent trials never write the same file. A run's
detail files are written before its ``runs`` row: a crash in between leaves detail files without
a row, which ``read`` ignores and ``remove_orphans`` deletes. Rewriting a run id replaces its
files (the latest attempt wins), so a failed-then-completed run is one row, never two.

A run is complete only when its ``runs`` row says so and every file it wrote (``files_json``:
table -> rows) reads back with its table's schema and row count. A damaged file (truncated,
unreadable) makes its run incomplete, so the next sweep runs it again; a file that is not the
store's (a stray CSV, a Parquet file without the table's columns) is ignored. Both are listed by
``problems()``; reading never deletes anything.

Plain readers work too: ``pd.read_parquet("results/metrics")``, ``pyarrow.dataset``, or duckdb's
``read_parquet('results/metrics/*.parquet')`` (hidden temporary files are skipped by all three).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pa_compute
import pyarrow.parquet as pq

from harness.identity import configuration_key
from harness.metrics.version import METRIC_VERSION
from harness.results.schema import (
    DETAIL_TABLES,
    LEGACY_PREDICTION_COLUMNS,
    PREDICTIONS,
    RUNS,
    SCHEMA_VERSION,
    STATUS_COMPLETE,
    STATUS_FAILED,
    STATUSES,
    TABLES,
    TRIALS,
    TrialResult,
    to_json,
    with_version,
)

_JSON_COLUMNS = ("config_json", "method_config_json", "axes_json", "package_versions_json", "hardware_json")


class ResultSchemaError(ValueError):
    """A row that does not fit its table's schema; the message names the table, row and column."""


DAMAGED = "damaged"  # one of the store's own files that does not read back: its run runs again
FOREIGN = "foreign"  # a file that is not the store's: ignored
STALE = "stale"  # a run scored by another version of harness.metrics: its run runs again
_FILE_TABLES = {**TABLES, "predictions": PREDICTIONS}
_OWNER_COLUMN = {"trials": "sweep"}  # the column naming a file's stem; run_id elsewhere
_MAP_BYTES = {"anomaly_map", *LEGACY_PREDICTION_COLUMNS}  # never read to check a file


@dataclass(frozen=True)
class StoreProblem:
    """A file the store cannot use, and why."""

    path: Path
    kind: str  # DAMAGED, STALE or FOREIGN
    reason: str
    run_id: str | None = None  # the run a damaged file belongs to

    def __str__(self) -> str:
        what = {DAMAGED: "damaged", STALE: "out of date"}.get(self.kind, "not a result file, ignored")
        return f"{self.path} ({what}): {self.reason}"


class ResultStore:
    """A result store rooted at a directory (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self._loaded: dict[Path, tuple[tuple, str, pa.Table | StoreProblem]] = {}  # path -> (stat, table, content)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # ------------------------------------------------------------ writing

    def write_run(self, result: TrialResult, *, provenance: bool = True) -> str:
        """Write a finished run: detail tables first, then its runs row (the commit marker)."""
        run = self._complete_run_row(result.run, provenance)
        run_id = run["run_id"]
        # Every table is built (and so validated) before the first file is written.
        details = {}
        for table in DETAIL_TABLES:
            rows = [self._detail_row(table, row, run) for row in getattr(result, table)]
            details[table] = rows_to_table(rows, DETAIL_TABLES[table], table) if rows else None
        run["files_json"] = to_json(self._files_of(run_id, details))
        runs_table = rows_to_table([run], RUNS, "runs")
        for table, arrow_table in details.items():
            path = self._file(table, run_id)
            if arrow_table is not None:
                atomic_write_table(arrow_table, path)
            else:
                path.unlink(missing_ok=True)  # a stale file from an earlier attempt of this id
        atomic_write_table(runs_table, self._file("runs", run_id))
        return run_id

    def write_failure(self, run_id: str, config: dict | None, reason: str, **run_fields: Any) -> str:
        """Record a failed run: a runs row with status "failed"; detail files of this id are removed."""
        run = {"run_id": run_id, "status": STATUS_FAILED, "failure_reason": str(reason), **run_fields}
        if config is not None:
            run.setdefault("config_json", config)
            for key in ("method", "preset", "dataset", "seed"):
                if key in config:
                    run.setdefault(key, config[key])
        row = self._complete_run_row(run, provenance=True)
        for table in DETAIL_TABLES:
            self._file(table, run_id).unlink(missing_ok=True)
        self.predictions_path(run_id).unlink(missing_ok=True)
        self.checkpoint_path(run_id).unlink(missing_ok=True)
        atomic_write_table(rows_to_table([row], RUNS, "runs"), self._file("runs", run_id))
        return run_id

    def write_trials(self, sweep: str, trials: Iterable[Any]) -> Path:
        """Record a sweep's expanded trial list (objects with index, config, axes, label, run_id)."""
        rows = [
            {
                "sweep": sweep,
                "trial_index": trial.index,
                "run_id": trial.run_id,
                "label": trial.label,
                "seed": trial.config.get("seed"),
                "configuration_key": configuration_key(trial.config),
                "config_json": to_json(trial.config),
                "axes_json": to_json(trial.axes),
            }
            for trial in trials
        ]
        path = self._file("trials", sweep)
        atomic_write_table(rows_to_table(rows, TRIALS, "trials"), path)
        return path

    def predictions_path(self, run_id: str) -> Path:
        """Where a run's prediction artefact lives (written with results.predictions.write_predictions)."""
        return self.root / "predictions" / f"{run_id}.parquet"

    def checkpoint_path(self, run_id: str) -> Path:
        """Where a run's final model state is kept: ``{"model": state_dict, "epoch": last epoch}``."""
        return self.root / "checkpoints" / f"{self._file('checkpoints', run_id).stem}.pt"

    def write_checkpoint(self, run_id: str, model_file: str | Path) -> Path:
        """Keep the model state of a loop checkpoint (model.pt) for ``run_id``, without the optimiser's
        state; written before the run's row, like its other files, through a hidden temporary file."""
        import torch

        state = torch.load(model_file, map_location="cpu", weights_only=True)
        path = self.checkpoint_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            torch.save({"model": state["model"], "epoch": state.get("epoch")}, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    # ------------------------------------------------------------ reading

    def read(self, table: str, run_ids: Iterable[str] | None = None) -> pa.Table:
        """All usable rows of a table. Detail rows count only for runs that are complete and intact."""
        if table not in TABLES:
            raise KeyError(f"unknown result table {table!r}; the store has {', '.join(TABLES)}")
        wanted = set(run_ids) if run_ids is not None else None
        if table in DETAIL_TABLES:
            complete = self.completed_run_ids()
            wanted = complete if wanted is None else wanted & complete
        result = self._read_table(table)
        if wanted is not None and table != "trials":
            result = result.filter(pa_compute.is_in(result["run_id"], pa.array(sorted(wanted), pa.string())))
        return result

    def runs(self) -> pa.Table:
        return self.read("runs")

    def completed_run_ids(self) -> set[str]:
        """Runs whose runs row says complete and whose every file reads back as written."""
        damaged = self.damaged_runs()
        return self._run_ids_with_status(STATUS_COMPLETE) - set(damaged)

    def failed_run_ids(self) -> set[str]:
        return self._run_ids_with_status(STATUS_FAILED)

    def damaged_runs(self) -> dict[str, list[StoreProblem]]:
        """run_id -> the problems of its files, for every run a sweep must run again to repair."""
        damaged: dict[str, list[StoreProblem]] = {}
        for row in self._read_table("runs").to_pylist():
            if row["status"] == STATUS_COMPLETE:
                for problem in self._damage(row):
                    damaged.setdefault(row["run_id"], []).append(problem)
        for problem in self.problems():
            if problem.kind == DAMAGED and problem.path.parent.name == "runs":
                damaged.setdefault(problem.run_id, []).append(problem)
        return damaged

    def problems(self) -> list[StoreProblem]:
        """Every damaged or foreign file that the reads so far met and that is still there, by path."""
        for path in [path for path in self._loaded if not path.exists()]:
            del self._loaded[path]
        found = [self._load(table, path) for path, (_, table, _) in list(self._loaded.items())]
        return sorted((f for f in found if isinstance(f, StoreProblem)), key=lambda problem: str(problem.path))

    def sweeps(self) -> list[str]:
        """Sweep names seen in the runs table or in recorded trial lists."""
        names = set(self.read("runs").column("sweep").to_pylist()) | set(self.read("trials").column("sweep").to_pylist())
        return sorted(name for name in names if name)

    def is_empty(self) -> bool:
        return not any((self.root / "runs").glob("[!.]*.parquet"))

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files and detail files with no runs row. Call only while no trial is writing."""
        known = {path.stem for path in (self.root / "runs").glob("[!.]*.parquet")}
        removed = []
        for table in (*TABLES, "predictions", "checkpoints"):
            directory = self.root / table
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                hidden_temporary = path.name.startswith(".") and path.name.endswith(".tmp")
                own_file = path.suffix == (".pt" if table == "checkpoints" else ".parquet")
                orphan = table in (*DETAIL_TABLES, "predictions", "checkpoints") and own_file and path.stem not in known
                if hidden_temporary or orphan:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # ------------------------------------------------------------ internals

    def _file(self, table: str, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot name a file in the {table} table (expected a run id or sweep name)")
        return self.root / table / f"{name}.parquet"

    def _run_ids_with_status(self, status: str) -> set[str]:
        runs = self._read_table("runs")
        return {rid for rid, st in zip(runs["run_id"].to_pylist(), runs["status"].to_pylist()) if st == status}

    def _files_of(self, run_id: str, details: dict[str, pa.Table | None]) -> dict[str, int]:
        """table -> rows of every file this run has written, predictions included."""
        files = {table: data.num_rows for table, data in details.items() if data is not None}
        predictions = self.predictions_path(run_id)
        if predictions.exists():
            with pq.ParquetFile(predictions) as parquet:
                files["predictions"] = parquet.metadata.num_rows
        return files

    def _damage(self, run: dict) -> list[StoreProblem]:
        """What is wrong with the files of a complete run (nothing, for an intact one)."""
        run_id = run["run_id"]
        if run.get("files_json"):
            expected = json.loads(run["files_json"])
        else:  # written before runs rows listed their files: every file there must read back
            expected = {table: None for table in (*DETAIL_TABLES, "predictions") if self._path(table, run_id).exists()}
        problems = []
        if run.get("metric_version") and run["metric_version"] != METRIC_VERSION:
            problems.append(StoreProblem(
                self._file("runs", run_id), STALE,
                f"scored by harness.metrics {run['metric_version']}, this installation scores with {METRIC_VERSION}; "
                "the next sweep runs it again", run_id,
            ))
        for table, rows in expected.items():
            path = self._path(table, run_id)
            if not path.exists():
                problems.append(StoreProblem(path, DAMAGED, f"missing; the run wrote {rows} rows here", run_id))
                continue
            loaded = self._load(table, path)
            if isinstance(loaded, StoreProblem):
                problems.append(loaded)
            elif rows is not None and loaded.num_rows != rows:
                problems.append(StoreProblem(path, DAMAGED, f"{loaded.num_rows} rows; the run wrote {rows}", run_id))
        return problems

    def _path(self, table: str, run_id: str) -> Path:
        return self.predictions_path(run_id) if table == "predictions" else self._file(table, run_id)

    def _read_table(self, table: str) -> pa.Table:
        """The usable files of a table, concatenated; damaged and foreign files are left out."""
        schema = TABLES[table]
        directory = self.root / table
        paths = sorted(p for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []
        parts = [loaded for loaded in (self._load(table, path) for path in paths) if isinstance(loaded, pa.Table)]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def _load(self, table: str, path: Path) -> pa.Table | StoreProblem:
        """One file of a table under today's schema, or the problem with it (remembered until it changes)."""
        try:
            stat = path.stat()
        except OSError as error:
            return StoreProblem(path, DAMAGED, f"cannot be read ({error.strerror})", path.stem)
        version = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        remembered = self._loaded.get(path)
        if remembered is None or remembered[0] != version:
            remembered = self._loaded[path] = (version, table, _load_file(table, path))
        return remembered[2]

    def _complete_run_row(self, run: dict, provenance: bool) -> dict:
        import harness

        row = dict(run)
        if not row.get("run_id"):
            raise ResultSchemaError("runs row: 'run_id' is missing (expected the trial's run id)")
        row.setdefault("status", STATUS_COMPLETE)
        if row["status"] not in STATUSES:
            raise ResultSchemaError(f"runs row {row['run_id']}: status {row['status']!r}; expected one of {STATUSES}")
        for column in _JSON_COLUMNS:
            if column in row and row[column] is not None and not isinstance(row[column], str):
                row[column] = to_json(row[column])
        if row.get("config_json") and not row.get("configuration_key"):
            row["configuration_key"] = configuration_key(json.loads(row["config_json"]))
        if provenance:
            from harness.results import provenance as prov

            if "git_revision" not in row:
                row["git_revision"] = prov.git_revision()
            if "package_versions_json" not in row:
                row["package_versions_json"] = to_json(prov.package_versions())
            if "hardware_json" not in row:
                row["hardware_json"] = to_json(prov.hardware())
            if "torch_version" not in row:  # a failure: the trial's process, not the loop's, is known
                row.update(prov.compute_environment())
        row.setdefault("finished_at", datetime.now(timezone.utc))
        row.setdefault("harness_version", harness.__version__)
        row["schema_version"] = SCHEMA_VERSION
        return row

    @staticmethod
    def _detail_row(table: str, row: dict, run: dict) -> dict:
        row = dict(row)
        if row.setdefault("run_id", run["run_id"]) != run["run_id"]:
            raise ResultSchemaError(
                f"{table} row names run {row['run_id']!r} inside the result of run {run['run_id']!r}"
            )
        if table == "routing" and "class" in row and "class_name" not in row:
            row["class_name"] = row.pop("class")  # methods.summarise_routing names it "class"
        if table == "routing" and row.get("expert") is not None:
            row["expert"] = str(row["expert"])
        if table == "metrics":
            row.setdefault("dataset", run.get("dataset"))
            row.setdefault("metric_version", run.get("metric_version"))
        return row


def rows_to_table(rows: list[dict], schema: pa.Schema, table: str) -> pa.Table:
    """Rows (dicts) to an Arrow table of exactly ``schema``; unknown or missing required columns are errors."""
    names = set(schema.names)
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ResultSchemaError(
                f"{table} row {index}: unknown column {unknown[0]!r}; expected some of {', '.join(schema.names)}"
            )
        for field in schema:
            if not field.nullable and row.get(field.name) is None:
                raise ResultSchemaError(f"{table} row {index}: column {field.name!r} is required")
    columns = []
    for field in schema:
        values = [_coerce(row.get(field.name), field.type) for row in rows]
        try:
            columns.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            bad = next((v for v in values if v is not None), None)
            raise ResultSchemaError(
                f"{table}: column {field.name!r} expects {field.type}, got {bad!r} ({exc})"
            ) from None
    return pa.Table.from_arrays(columns, schema=with_version(schema))


def _coerce(value: Any, arrow_type: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif isinstance(value, (int, float)):
            value = datetime.fromtimestamp(value, tz=timezone.utc)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):  # numpy scalars
        value = value.item()
    if pa.types.is_string(arrow_type) and isinstance(value, (int, float, Path)) and not isinstance(value, bool):
        return str(value)  # e.g. a method version given as an int
    if pa.types.is_floating(arrow_type) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if pa.types.is_integer(arrow_type) and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a hidden temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _load_file(table: str, path: Path) -> pa.Table | StoreProblem:
    """A file conformed to its table's schema (map bytes left unread), or why it cannot be used."""
    if path.is_dir() or path.suffix != ".parquet":
        return StoreProblem(path, FOREIGN, f"the {table} table holds only <name>.parquet files")
    try:
        with pq.ParquetFile(path) as parquet:
            data = parquet.read(columns=[name for name in parquet.schema_arrow.names if name not in _MAP_BYTES])
    except (OSError, pa.ArrowException) as error:
        return StoreProblem(path, DAMAGED, f"cannot be read as Parquet ({error})", path.stem)
    return _conform(table, path, data)


def _conform(table: str, path: Path, data: pa.Table) -> pa.Table | StoreProblem:
    """Today's columns in today's order and types; columns older files lack are null."""
    schema = _FILE_TABLES[table]
    columns = []
    for field in schema:
        present = field.name in data.column_names
        if not field.nullable and (not present or data[field.name].null_count):
            return StoreProblem(path, FOREIGN, f"no {field.name!r} in every row, so not a {table} file of this store")
        try:
            columns.append(data[field.name].cast(field.type) if present else pa.nulls(data.num_rows, field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return StoreProblem(path, FOREIGN, f"column {field.name!r} is {data[field.name].type}, not {field.type}")
    conformed = pa.Table.from_arrays(columns, schema=schema)
    owners = set(conformed[_OWNER_COLUMN.get(table, "run_id")].drop_null().to_pylist())
    if owners - {path.stem}:
        return StoreProblem(path, FOREIGN, f"its rows belong to {sorted(owners)[:3]}, not to {path.stem!r}")
    return conformed
