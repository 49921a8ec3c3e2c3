"""Explicit Arrow schemas of the result store's tables (issue #5, item 5; datasets-and-metrics.md section 7.10).

Long format throughout: one ``runs`` row per run, one ``metrics`` row per (class, metric), one
``sample_scores`` row per test image, one ``routing`` row per (class, layer, expert). Every file
carries ``SCHEMA_VERSION`` in its metadata and in the ``schema_version`` column of ``runs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

SCHEMA_VERSION = 3  # 2: provenance columns, files_json; predictions carry run_id and anomaly_map; 3: sample_scores.aupimo and .view

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUSES = (STATUS_COMPLETE, STATUS_FAILED)

_UTC_TIME = pa.timestamp("us", tz="UTC")

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("sweep", pa.string()),
        pa.field("label", pa.string()),
        pa.field("method", pa.string()),
        pa.field("method_version", pa.string()),
        pa.field("preset", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("dataset_fingerprint", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("configuration_key", pa.string()),  # same for all seeds of one configuration
        pa.field("config_json", pa.string()),
        pa.field("method_config_json", pa.string()),  # the preset merged with the overrides
        pa.field("axes_json", pa.string()),
        pa.field("git_revision", pa.string()),
        pa.field("package_versions_json", pa.string()),
        pa.field("hardware_json", pa.string()),
        pa.field("workers", pa.int32()),  # as configured: 0 runs the loop in the trial's own process
        pa.field("workers_used", pa.int32()),  # processes that ran the loop (the Train world size)
        pa.field("device", pa.string()),
        pa.field("backbone_weights", pa.string()),  # the resolved source: packaged:..., file:..., hub:..., random
        pa.field("backbone_weights_sha256", pa.string()),  # of the loaded state dict's keys, dtypes, shapes and bytes
        pa.field("epochs", pa.int32()),
        pa.field("final_train_loss", pa.float64()),
        pa.field("started_at", _UTC_TIME),
        pa.field("finished_at", _UTC_TIME),
        pa.field("wall_time_features_s", pa.float64()),
        pa.field("features_cached", pa.bool_()),
        pa.field("wall_time_train_s", pa.float64()),
        pa.field("wall_time_eval_s", pa.float64()),
        pa.field("wall_time_total_s", pa.float64()),
        pa.field("params_trainable", pa.int64()),
        pa.field("params_total", pa.int64()),  # trainable + frozen backbone
        pa.field("params_reconstruction", pa.int64()),  # the reconstruction/decoder module alone
        pa.field("macs_reconstruction_g", pa.float64()),  # true MACs incl. masked-attention QK^T
        pa.field("macs_total_g", pa.float64()),
        pa.field("flops_reconstruction_g", pa.float64()),  # 2 x MACs, the papers' "FLOPs"
        pa.field("flops_total_g", pa.float64()),
        pa.field("peak_memory_mb", pa.float64()),
        pa.field("train_throughput_img_s", pa.float64()),
        pa.field("infer_throughput_img_s", pa.float64()),
        pa.field("failure_reason", pa.string()),
        pa.field("metric_version", pa.string()),
        pa.field("harness_version", pa.string()),
        pa.field("command_line", pa.string()),  # the driver's sys.argv
        # What makes two machines compute different numbers (of the process that ran the loop's rank 0).
        pa.field("cpu_model", pa.string()),
        pa.field("cpu_capability", pa.string()),  # torch's kernel dispatch level: DEFAULT, AVX2, AVX512, ...
        pa.field("cpu_flags", pa.string()),  # the vector instruction sets present, e.g. "avx avx2 fma avx512f"
        pa.field("gpu_model", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("cuda_version", pa.string()),
        pa.field("cudnn_version", pa.string()),
        pa.field("torch_threads", pa.int32()),
        pa.field("torch_interop_threads", pa.int32()),
        pa.field("omp_num_threads", pa.string()),  # the environment variables as set (null: unset)
        pa.field("mkl_num_threads", pa.string()),
        pa.field("files_json", pa.string()),  # table -> rows this run wrote; what makes it complete
        pa.field("schema_version", pa.int32()),
    ]
)

METRICS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("class_name", pa.string(), nullable=False),  # a class, "mean" or "pooled"
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),  # NaN when undefined (e.g. no anomalous pixels)
        pa.field("note", pa.string()),
        pa.field("metric_version", pa.string()),
    ]
)

SAMPLE_SCORES = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("defect_type", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("aupimo", pa.float64()),  # the image's AUPIMO within its class; null: normal, or stored before v3
        pa.field("view", pa.string()),  # the camera view of a multi-view dataset (Real-IAD: C1..C5); null otherwise
    ]
)

ROUTING = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("layer", pa.string()),  # e.g. "decoder.2.moa"
        pa.field("expert", pa.string()),  # the method's expert/adapter name, e.g. "adapter_d16"
        pa.field("gate_mean", pa.float64()),
        pa.field("selection_freq", pa.float64()),
        pa.field("entropy", pa.float64()),  # router entropy of the layer (same for its experts)
        pa.field("samples", pa.int64()),
    ]
)

# One row per expanded trial of a sweep, written by the runner before trials start: what the
# leaderboard compares against to show missing cells.
TRIALS = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("trial_index", pa.int32()),
        pa.field("run_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("configuration_key", pa.string()),
        pa.field("config_json", pa.string()),
        pa.field("axes_json", pa.string()),
    ]
)

PREDICTIONS = pa.schema(
    [
        pa.field("run_id", pa.string()),  # null only in a worker's part before the run is recorded
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("class_name", pa.string()),
        pa.field("defect_type", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("map_dtype", pa.string()),  # numpy dtype of the map bytes: float16
        pa.field("anomaly_map", pa.binary()),  # row-major, height x width; read back with results.read_maps
    ]
)
LEGACY_PREDICTION_COLUMNS = {"map": "anomaly_map"}  # schema 1 named the map column "map"

DETAIL_TABLES = {"metrics": METRICS, "sample_scores": SAMPLE_SCORES, "routing": ROUTING}
TABLES = {"runs": RUNS, **DETAIL_TABLES, "trials": TRIALS}


def with_version(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({b"harness_schema_version": str(SCHEMA_VERSION).encode()})


@dataclass
class TrialResult:
    """Everything one finished trial writes: a runs row plus its detail rows (run_id filled in by the store)."""

    run: dict
    metrics: list[dict] = field(default_factory=list)
    sample_scores: list[dict] = field(default_factory=list)
    routing: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]


def to_json(value) -> str:
    """How dict-valued run fields (config, axes, versions, hardware) are stored."""
    return json.dumps(value, sort_keys=True, default=str)
