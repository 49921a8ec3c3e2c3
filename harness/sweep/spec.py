"""Sweep files: schema, validation and expansion into trials (issue #5, item 1; docs/sweeps.md).

A sweep file is a YAML mapping with ``name``, ``base`` (one trial config), ``axes`` (dotted config
keys swept by grid, choice, uniform, loguniform or randint), ``seeds``, ``tune``, ``scaling`` and
``results``. Validation collects every problem before anything runs; each names the file, the
key, the value found and what was expected.

Expansion is done here, in the driver, and nowhere else: grid axes form a Cartesian product,
sampled axes are drawn ``tune.num_samples`` times per grid point from a generator seeded by
``tune.sample_seed``, and every resulting configuration is repeated once per seed (seed
innermost, so the seeds of a configuration share its sampled values). A dry run and a real run
therefore see the same trials, and their run ids are stable.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigIssue, ConfigProblems, load_yaml, parse_assignment, set_dotted, show_value
from harness.formatting import format_value

TOP_LEVEL_KEYS = ("name", "description", "base", "axes", "studies", "seeds", "tune", "scaling", "results", "checkpoints")
STUDY_KEYS = ("name", "base", "axes")
BASE_KEYS = ("method", "preset", "dataset", "data_root", "classes", "expect", "dataset_options", "method_config")
AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SAMPLED_KINDS = ("choice", "uniform", "loguniform", "randint")
TUNE_KEYS = ("num_samples", "max_concurrent_trials", "scheduler", "sample_seed")
ASHA_KEYS = ("metric", "mode", "max_t", "grace_period", "reduction_factor")
SCALING_KEYS = ("workers", "use_gpu", "resources_per_worker")
DEFAULT_RESULTS = "./results"
CHECKPOINT_RETENTION = ("last", "none")  # last: each trial's final model state kept in the store
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


SweepIssue = ConfigIssue


class SweepError(ConfigProblems):
    """Every problem found in one sweep file, reported together."""

    def __init__(self, source: str, issues: list[ConfigIssue], what: str = "in the sweep file"):
        super().__init__(source, issues, what)


@dataclass(frozen=True)
class Axis:
    """One swept config key: ``grid``/``choice`` carry ``values``; the others ``low``/``high``."""

    key: str
    kind: str
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None

    @property
    def sampled(self) -> bool:
        return self.kind in SAMPLED_KINDS

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return copy.deepcopy(self.values[rng.randrange(len(self.values))])
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        if self.kind == "randint":  # high exclusive, as in Ray Tune
            return rng.randrange(int(self.low), int(self.high))
        raise ValueError(f"axis {self.key} of kind {self.kind} is not sampled")


@dataclass(frozen=True)
class AshaSettings:
    metric: str
    mode: str = "max"
    max_t: int = 100
    grace_period: int = 1
    reduction_factor: float = 4.0


@dataclass(frozen=True)
class TuneSettings:
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    asha: AshaSettings | None = None
    sample_seed: int = 0


@dataclass(frozen=True)
class ScalingSettings:
    """workers=0 runs the training loop in-process in the Tune trial; N>0 uses Ray Train with N workers."""

    workers: int = 0
    use_gpu: str | bool = "auto"
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 1})


@dataclass
class Trial:
    index: int
    config: dict
    axes: dict
    label: str
    run_id: str | None = None

    @property
    def seed(self) -> int:
        return self.config["seed"]


@dataclass
class Study:
    """One block of a sweep: a base (the sweep's base with the study's keys laid over it) and its axes.

    A sweep without ``studies`` is one study; with them, each study is expanded like a sweep of its
    own (the sweep's axes and its own), and the trials follow one another in file order, so one file
    can sweep several methods over the axes each of them has."""

    name: str
    base: dict
    axes: list[Axis]
    where: str = ""  # "" for the sweep's own base and axes, "studies[i]." for a study's


@dataclass
class SweepSpec:
    name: str
    description: str
    base: dict
    axes: list[Axis]
    seeds: list[int]
    tune: TuneSettings
    scaling: ScalingSettings
    results: Path
    checkpoints: str = "last"
    source: str = "<sweep>"
    notes: list[str] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)

    def trials(self) -> list[Trial]:
        return expand(self)

    def each_study(self) -> list[Study]:
        return self.studies or [Study("", self.base, self.axes)]

    @property
    def all_axes(self) -> list[Axis]:
        return [axis for study in self.each_study() for axis in study.axes]


# ---------------------------------------------------------------- loading and CLI overrides


def load_sweep(path: str | Path, overrides: dict | None = None, assignments: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep file; raises SweepError listing every problem.

    ``overrides`` maps base keys (dataset, data_root, preset, classes) or ``results`` to values from
    the command line; ``assignments`` are ``KEY=VALUE`` strings (``--set``) for any dotted key.
    """
    raw = load_yaml(path)
    raw = apply_overrides(raw, overrides or {}, assignments or [])
    return parse_sweep(raw, source=str(path))


def apply_overrides(raw: dict, overrides: dict, assignments: list[str]) -> dict:
    """Lay command-line values over a raw sweep mapping; an override of a swept key removes that axis."""
    data = copy.deepcopy(raw)
    pairs = [(key, value) for key, value in overrides.items() if value is not None]
    pairs += [parse_assignment(text) for text in assignments]
    for key, value in pairs:
        top = key.split(".", 1)[0]
        if top in TOP_LEVEL_KEYS and top != "base":
            set_dotted(data, key, value)
            continue
        base_key = key[len("base."):] if key.startswith("base.") else key
        if not isinstance(data.get("base"), dict):
            data["base"] = {}
        studies = _studies_taking(data, base_key)
        if not studies:
            set_dotted(data["base"], base_key, value)
        dropped = _drop_axis(data, base_key)
        for study in studies:
            study.setdefault("base", {})
            set_dotted(study["base"], base_key, value)  # the command line wins over a study's own value
            dropped = _drop_axis(study, base_key) or dropped
        if dropped:
            data.setdefault("_notes", []).append(f"{base_key} set on the command line; its axis is dropped")
    return data


def _studies_taking(data: dict, key: str) -> list[dict]:
    """With studies, a method_config key set on the command line goes to the studies whose method has
    it (``--set top_k=1`` in a sweep of several methods); other keys, or none taking it, go to base."""
    studies = [s for s in data.get("studies") or [] if isinstance(s, dict)]
    if not studies or not key.startswith("method_config."):
        return []
    import methods

    option = key.split(".")[1]
    taking = []
    for study in studies:
        own = study.get("base") if isinstance(study.get("base"), dict) else {}
        name = own.get("method", data["base"].get("method"))
        try:
            schema = methods.get(name).config_schema
        except Exception:  # an unknown method is reported by validation, with its name
            continue
        if option in schema:
            taking.append(study)
    return taking


def _drop_axis(section: dict, key: str) -> bool:
    if isinstance(section.get("axes"), dict) and key in section["axes"]:
        del section["axes"][key]
        return True
    return False





# ---------------------------------------------------------------- validation


def parse_sweep(raw: dict, source: str = "<sweep>") -> SweepSpec:
    """Validate a raw sweep mapping (all problems at once) and build the SweepSpec."""
    issues: list[SweepIssue] = []
    notes = list(raw.get("_notes", []))
    raw = {key: value for key, value in raw.items() if key != "_notes"}

    def bad(key: str, value: Any, expected: str) -> None:
        issues.append(SweepIssue(key, value, expected))

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            bad(key, raw[key], f"one of the top-level keys {', '.join(TOP_LEVEL_KEYS)}")

    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        bad("name", name, "a sweep name of letters, digits, '_', '-' or '.' (it names the sweep in the store)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        bad("description", description, "a string")
        description = ""

    base = raw.get("base")
    if not isinstance(base, dict):
        bad("base", base, "a mapping with at least 'method' (the config every trial starts from)")
        base = {}
    base = _validate_base(base, bad)
    axes = _validate_axes(raw.get("axes", {}), bad)
    studies = _validate_studies(raw.get("studies"), base, axes, bad)
    seeds = _validate_seeds(raw.get("seeds", [0]), bad)
    tune = _validate_tune(raw.get("tune", {}) or {}, axes + [a for study in studies for a in study.axes], bad)
    scaling = _validate_scaling(raw.get("scaling", {}) or {}, bad)
    results = raw.get("results", DEFAULT_RESULTS)
    if not isinstance(results, (str, Path)) or not str(results):
        bad("results", results, "a directory path for the result store (default ./results)")
        results = DEFAULT_RESULTS
    checkpoints = raw.get("checkpoints", "last")
    if checkpoints not in CHECKPOINT_RETENTION:
        bad("checkpoints", checkpoints, "last (keep each trial's final model in the store, for harness predict) or none")
        checkpoints = "last"

    spec = SweepSpec(
        name=name if isinstance(name, str) else "",
        description=description,
        base=base,
        axes=axes,
        seeds=seeds,
        tune=tune,
        scaling=scaling,
        results=Path(results).expanduser().resolve(),
        checkpoints=checkpoints,
        source=source,
        notes=notes,
        studies=studies,
    )
    _validate_trial_configs(spec, issues)
    if issues:
        raise SweepError(source, issues)
    return spec


def _validate_base(base: dict, bad) -> dict:
    base = copy.deepcopy(base)
    for key in base:
        if key not in BASE_KEYS:
            bad(f"base.{key}", base[key], f"one of {', '.join(BASE_KEYS)} (method options go under base.method_config)")
    base.setdefault("method", None)  # a missing method is reported with the trial checks
    base.setdefault("preset", "cpu")
    base.setdefault("dataset", "embedded")
    base.setdefault("data_root", None)
    base.setdefault("classes", None)
    if "dataset_options" in base and base["dataset_options"] in (None, {}):
        del base["dataset_options"]  # none given: the trials hash as they did before options existed
    if base.get("method_config") is None:
        base["method_config"] = {}
    if not isinstance(base["method_config"], dict):
        bad("base.method_config", base["method_config"], "a mapping of method options, e.g. {epochs: 3}")
        base["method_config"] = {}
    return base


def _validate_studies(studies: Any, base: dict, axes: list[Axis], bad) -> list[Study]:
    """Each study's base laid over the sweep's (method_config merged key by key) and its axes after the sweep's."""
    if studies is None:
        return []
    if not isinstance(studies, list) or not studies:
        bad("studies", studies, "a non-empty list of mappings with 'base' and/or 'axes' (one block per method, say)")
        return []
    parsed = []
    for i, study in enumerate(studies):
        where = f"studies[{i}]"
        if not isinstance(study, dict):
            bad(where, study, "a mapping with keys name, base, axes")
            continue
        for key in study:
            if key not in STUDY_KEYS:
                bad(f"{where}.{key}", study[key], f"one of {', '.join(STUDY_KEYS)}")
        own = study.get("base") or {}
        if not isinstance(own, dict):
            bad(f"{where}.base", own, "a mapping of base keys laid over the sweep's base")
            own = {}
        merged = copy.deepcopy(base)
        for key, value in own.items():
            if key not in BASE_KEYS:
                bad(f"{where}.base.{key}", value, f"one of {', '.join(BASE_KEYS)}")
            elif key == "method_config" and isinstance(value, dict):
                merged["method_config"] = {**merged["method_config"], **copy.deepcopy(value)}
            else:
                merged[key] = copy.deepcopy(value)
        study_bad = lambda key, value, expected: bad(f"{where}.{key}", value, expected)  # noqa: E731
        own_axes = _validate_axes(study.get("axes", {}), study_bad)
        parsed.append(Study(str(study.get("name", f"study{i}")), merged, axes + own_axes, f"{where}."))
    return parsed


def _validate_axes(axes: Any, bad) -> list[Axis]:
    if axes is None:
        return []
    if not isinstance(axes, dict):
        bad("axes", axes, "a mapping from a dotted config key to an axis such as {grid: [a, b]}")
        return []
    parsed = []
    for key, spec in axes.items():
        where = f"axes.{key}"
        top = str(key).split(".", 1)[0]
        if key == "seed":
            bad(where, spec, "no seed axis here: use the top-level 'seeds' key")
            continue
        if top not in BASE_KEYS or (top == "method_config" and key == "method_config"):
            bad(where, spec, f"a key of base ({', '.join(BASE_KEYS)}), dotted below method_config or dataset_options, "
                             "e.g. method_config.routing or dataset_options.views")
            continue
        axis = _parse_axis(str(key), spec, bad)
        if axis is not None:
            parsed.append(axis)
    return parsed


def _parse_axis(key: str, spec: Any, bad) -> Axis | None:
    where = f"axes.{key}"
    if isinstance(spec, list):
        spec = {"grid": spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        bad(where, spec, f"a mapping with exactly one of {', '.join(AXIS_KINDS)}, e.g. {{grid: [a, b]}}")
        return None
    (kind, arg), = spec.items()
    if kind not in AXIS_KINDS:
        bad(f"{where}.{kind}", arg, f"an axis type, one of {', '.join(AXIS_KINDS)}")
        return None
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            bad(f"{where}.{kind}", arg, "a non-empty list of values")
            return None
        return Axis(key, kind, values=tuple(arg))
    if isinstance(arg, list):
        arg = [_number_from_text(v) for v in arg]
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(v) for v in arg)):
        bad(f"{where}.{kind}", arg, "[low, high], two numbers")
        return None
    low, high = arg
    if low >= high:
        bad(f"{where}.{kind}", arg, "low < high")
        return None
    if kind == "loguniform" and low <= 0:
        bad(f"{where}.{kind}", arg, "0 < low < high (a log scale needs positive bounds)")
        return None
    if kind == "randint" and not all(_is_int(v) for v in arg):
        bad(f"{where}.{kind}", arg, "[low, high] integers (high is exclusive)")
        return None
    return Axis(key, kind, low=low, high=high)


def _validate_seeds(seeds: Any, bad) -> list[int]:
    if isinstance(seeds, dict):
        unknown = set(seeds) - {"count", "start"}
        if unknown:
            bad(f"seeds.{sorted(unknown)[0]}", seeds[sorted(unknown)[0]], "only 'count' and 'start' under seeds")
        count = _checked_int("seeds.count", seeds.get("count"), 1, bad)
        start = _checked_int("seeds.start", seeds.get("start", 0), 0, bad)
        return list(range(start, start + count))
    if not isinstance(seeds, list) or not seeds:
        # a bare integer is ambiguous (one seed, or that many?): ask for the explicit form
        bad("seeds", seeds, "a non-empty list of integers such as [0, 1, 2], or {count: 3, start: 0}")
        return [0]
    good = []
    for i, seed in enumerate(seeds):
        if not _is_int(seed) or seed < 0:
            bad(f"seeds[{i}]", seed, "a non-negative integer")
        else:
            good.append(int(seed))
    if len(set(good)) != len(good):
        bad("seeds", seeds, "distinct seeds (a repeated seed would repeat the same run)")
    return good or [0]


def _checked_int(key: str, value: Any, minimum: int, bad, hint: str = "") -> int:
    """``value`` when it is an integer >= minimum; otherwise reported, and ``minimum`` stands in."""
    if _is_int(value) and value >= minimum:
        return value
    bad(key, value, f"an integer >= {minimum}{' ' + hint if hint else ''}")
    return minimum


def _known_keys(section: str, mapping: Any, allowed: tuple[str, ...], bad) -> bool:
    """False (and reported) when ``mapping`` is not a mapping; each unknown key is reported."""
    if not isinstance(mapping, dict):
        bad(section, mapping, f"a mapping with keys {', '.join(allowed)}")
        return False
    for key in mapping:
        if key not in allowed:
            bad(f"{section}.{key}", mapping[key], f"one of {', '.join(allowed)}")
    return True


def _validate_tune(tune: Any, axes: list[Axis], bad) -> TuneSettings:
    if not _known_keys("tune", tune, TUNE_KEYS, bad):
        return TuneSettings()
    num_samples = _checked_int("tune.num_samples", tune.get("num_samples", 1), 1, bad)
    if num_samples > 1 and not any(axis.sampled for axis in axes):
        bad("tune.num_samples", num_samples, "1 when no axis is sampled (repeat runs with 'seeds' instead)")
    concurrent = tune.get("max_concurrent_trials")
    if concurrent is not None and (not _is_int(concurrent) or concurrent < 1):
        bad("tune.max_concurrent_trials", concurrent, "an integer >= 1, or null for as many as resources allow")
        concurrent = None
    sample_seed = tune.get("sample_seed", 0)
    if not _is_int(sample_seed):
        bad("tune.sample_seed", sample_seed, "an integer (seeds the draws of sampled axes)")
        sample_seed = 0
    return TuneSettings(num_samples, concurrent, _validate_scheduler(tune.get("scheduler"), bad), sample_seed)


def _validate_scheduler(scheduler: Any, bad) -> AshaSettings | None:
    if scheduler is None:
        return None
    if not isinstance(scheduler, dict) or set(scheduler) != {"asha"} or not isinstance(scheduler["asha"], dict):
        bad("tune.scheduler", scheduler, "null, or {asha: {metric: ..., mode: max, max_t: ..., grace_period: ...}}")
        return None
    asha = scheduler["asha"]
    _known_keys("tune.scheduler.asha", asha, ASHA_KEYS, bad)
    metric = asha.get("metric")
    if not isinstance(metric, str) or not metric:
        bad("tune.scheduler.asha.metric", metric, "the name of a reported metric, e.g. i_auroc")
    mode = asha.get("mode", "max")
    if mode not in ("max", "min"):
        bad("tune.scheduler.asha.mode", mode, "max or min")
    max_t = _checked_int("tune.scheduler.asha.max_t", asha.get("max_t", 100), 1, bad, "(epochs)")
    grace = _checked_int("tune.scheduler.asha.grace_period", asha.get("grace_period", 1), 1, bad, "(epochs)")
    if grace > max_t:
        bad("tune.scheduler.asha.grace_period", grace, f"at most max_t ({max_t})")
    factor = asha.get("reduction_factor", 4)
    if not _is_number(factor) or factor <= 1:
        bad("tune.scheduler.asha.reduction_factor", factor, "a number > 1")
    return AshaSettings(str(metric), str(mode), max_t, grace, factor)


def _validate_scaling(scaling: Any, bad) -> ScalingSettings:
    if not _known_keys("scaling", scaling, SCALING_KEYS, bad):
        return ScalingSettings()
    workers = _checked_int("scaling.workers", scaling.get("workers", 0), 0, bad,
                           "(0 runs in-process, N uses Ray Train with N workers)")
    use_gpu = scaling.get("use_gpu", "auto")
    if use_gpu not in ("auto", True, False):
        bad("scaling.use_gpu", use_gpu, "auto, true or false")
        use_gpu = "auto"
    resources = scaling.get("resources_per_worker", {"CPU": 1})
    if not isinstance(resources, dict):
        bad("scaling.resources_per_worker", resources, "a mapping such as {CPU: 1, GPU: 0.5}")
        resources = {"CPU": 1}
    for key, amount in resources.items():
        if not _is_number(amount) or amount < 0:
            bad(f"scaling.resources_per_worker.{key}", amount, "a number >= 0")
    if "CPU" in resources and _is_number(resources["CPU"]) and resources["CPU"] <= 0:
        bad("scaling.resources_per_worker.CPU", resources["CPU"], "a number > 0 (a Ray trial cannot request 0 CPUs)")
    return ScalingSettings(workers, use_gpu, dict(resources))


def _validate_trial_configs(spec: SweepSpec, issues: list[ConfigIssue]) -> None:
    """Every distinct trial configuration through the one trial validation (harness.training.trial_config).

    Problems are named where the file sets the key (``axes.KEY`` for a swept key, else
    ``base.KEY``), each reported once, and never again for a key already reported above.
    """
    from harness.training.trial_config import dataset_issues, method_issues

    _resolve_data_root(spec)
    reported = {issue.key for issue in issues}
    seen: set[tuple] = set()
    checked: dict[str, list[ConfigIssue]] = {}
    for study in spec.each_study():
        swept = {axis.key for axis in study.axes}
        for trial in _expand_study(study, spec.seeds, spec.tune):
            c = trial.config
            found = method_issues(c.get("method"), c.get("preset"), c.get("method_config"))
            dataset_args = (c.get("dataset"), c.get("data_root"), c.get("classes"), c.get("expect"), c.get("dataset_options"))
            memo_key = repr(dataset_args)
            if memo_key not in checked:
                checked[memo_key] = dataset_issues(*dataset_args)
            for issue in found + checked[memo_key]:
                where = f"{study.where}axes.{issue.key}" if issue.key in swept else f"{study.where}base.{issue.key}"
                ident = (where, show_value(issue.value), issue.expected)
                if where not in reported and ident not in seen:
                    seen.add(ident)
                    issues.append(ConfigIssue(where, issue.value, issue.expected))


def _resolve_data_root(spec: SweepSpec) -> None:
    """An existing data_root becomes absolute: Ray workers change directory."""
    for base in [spec.base] + [study.base for study in spec.studies]:
        data_root = base.get("data_root")
        if isinstance(data_root, (str, Path)) and Path(data_root).expanduser().is_dir():
            base["data_root"] = str(Path(data_root).expanduser().resolve())


# ---------------------------------------------------------------- expansion


def expand(spec: SweepSpec) -> list[Trial]:
    """All trials of a sweep, in a stable order: study by study, grid product x samples x seeds (seed innermost)."""
    trials: list[Trial] = []
    for study in spec.each_study():
        for trial in _expand_study(study, spec.seeds, spec.tune):
            trial.index = len(trials)
            trials.append(trial)
    return trials


def _expand_study(study: Study, seeds: list[int], tune: TuneSettings) -> list[Trial]:
    from harness.training.trial_config import with_canonical_options

    grid_axes = [axis for axis in study.axes if not axis.sampled]
    sampled_axes = [axis for axis in study.axes if axis.sampled]
    rng = random.Random(tune.sample_seed)
    trials: list[Trial] = []
    for grid_point in itertools.product(*(axis.values for axis in grid_axes)):
        for _ in range(tune.num_samples if sampled_axes else 1):
            values = {axis.key: copy.deepcopy(value) for axis, value in zip(grid_axes, grid_point)}
            values.update({axis.key: axis.draw(rng) for axis in sampled_axes})
            for seed in seeds:
                config = copy.deepcopy(study.base)
                for key, value in values.items():
                    set_dotted(config, key, value)
                config = with_canonical_options(config)
                config["seed"] = seed
                axes = {**({"study": study.name} if study.where else {}), **values, "seed": seed}
                trials.append(Trial(len(trials), config, axes, trial_label(axes)))
    return trials


def trial_label(axes: dict) -> str:
    """A short label such as ``routing=top1 seed=0``: the last part of each key, compact values."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={format_value(value)}" for key, value in axes.items())


def _number_from_text(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it as the number it plainly is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "Axis",
    "AshaSettings",
    "ScalingSettings",
    "SweepError",
    "SweepIssue",
    "SweepSpec",
    "Trial",
    "TuneSettings",
    "apply_overrides",
    "expand",
    "load_sweep",
    "parse_sweep",
]
