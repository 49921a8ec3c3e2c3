"""Sweep files: validation messages, expansion counts and order, deterministic run ids, CLI dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError, deep_merge, get_dotted, load_yaml, parse_assignment, set_dotted
from harness.identity import configuration_key, run_id, trial_run_id
from harness.sweep.spec import SweepError, apply_overrides, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"


def write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def minimal(**extra) -> dict:
    return {"name": "t", "base": {"method": "uniad"}, **extra}


def issues_of(data: dict) -> dict[str, str]:
    with pytest.raises(SweepError) as caught:
        parse_sweep(data, source="s.yaml")
    return {issue.key: str(issue) for issue in caught.value.issues}


# ------------------------------------------------------------------ config helpers


def test_config_helpers(tmp_path):
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 5}, "d": [2]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [2]}
    config: dict = {}
    set_dotted(config, "method_config.routing", "top1")
    assert get_dotted(config, "method_config.routing") == "top1"
    assert get_dotted(config, "method_config.missing", None) is None
    with pytest.raises(ConfigError, match="'x.y' is not set"):
        get_dotted(config, "x.y")
    assert parse_assignment("method_config.bottlenecks=[16, 32]") == ("method_config.bottlenecks", [16, 32])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_assignment("epochs")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:.*line \d+.*invalid YAML"):
        load_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level is a list; expected a mapping"):
        load_yaml(listing)


# ------------------------------------------------------------------ validation


def test_all_problems_are_reported_together_with_key_value_and_expectation(tmp_path):
    data = {
        "name": "bad name",
        "base": {"method": "unilead", "dataset": "mvtec", "epochs": 3},
        "axes": {
            "method_config.lr": {"loguniform": [0, 1e-3]},
            "method_config.routing": {"grid": []},
            "method_config.d": {"normal": [0, 1]},
            "method_config.w": {"uniform": [2, 1]},
        },
        "seeds": [0, 1.5],
        "tune": {"num_samples": 0},
        "scaling": {"workers": -1, "gpus": 2},
        "extra": 1,
    }
    with pytest.raises(SweepError) as caught:
        load_sweep(write(tmp_path, data))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'sweep.yaml'}: 12 problems in the sweep file:")
    found = {issue.key: str(issue) for issue in caught.value.issues}
    assert found["extra"].startswith("extra: got 1; expected one of the top-level keys name, description")
    assert found["name"] == "name: got 'bad name'; expected a sweep name of letters, digits, '_', '-' or '.' (it names the sweep in the store)"
    assert "expected one of method, preset, dataset, data_root, classes, expect, dataset_options, method_config" in found["base.epochs"]
    assert found["axes.method_config.lr.loguniform"] == (
        "axes.method_config.lr.loguniform: got [0, 0.001]; expected 0 < low < high (a log scale needs positive bounds)"
    )
    assert found["axes.method_config.routing.grid"].endswith("got []; expected a non-empty list of values")
    assert "expected an axis type, one of grid, choice, uniform, loguniform, randint" in found["axes.method_config.d.normal"]
    assert found["axes.method_config.w.uniform"].endswith("got [2, 1]; expected low < high")
    assert found["seeds[1]"] == "seeds[1]: got 1.5; expected a non-negative integer"
    assert found["tune.num_samples"] == "tune.num_samples: got 0; expected an integer >= 1"
    assert found["scaling.workers"].startswith("scaling.workers: got -1; expected an integer >= 0")
    assert "expected one of workers, use_gpu, resources_per_worker" in found["scaling.gpus"]
    assert found["base.dataset"] == (
        "base.dataset: got 'mvtec'; expected one of embedded, embedded_3d, embedded_v3, mvtec_3d, mvtec_ad, mvtec_loco, real_iad, validation_a, validation_b, visa, generic"
    )


def test_unknown_method_and_method_config_key_are_named():
    found = issues_of({"name": "t", "base": {"method": "unilaed"}})
    assert found["base.method"].startswith("base.method: got 'unilaed'; expected one of ")
    assert "unilead" in found["base.method"]
    found = issues_of({"name": "t", "base": {"method": "unilead", "method_config": {"routng": "top1"}}})
    assert found["base.method_config.routng"].startswith("base.method_config.routng: got 'routng'; expected an option of unilead's cpu preset:")
    assert "routing" in found["base.method_config.routng"]
    found = issues_of({"name": "t", "base": {"method": "moead"}, "axes": {"method_config.num_experts": {"grid": [2, 4]}}})
    assert "axes.method_config.num_experts" in found and "experts" in found["axes.method_config.num_experts"]


def test_scheduler_scaling_and_seed_rules():
    found = issues_of(minimal(tune={"scheduler": {"asha": {"metric": "i_auroc", "max_t": 2, "grace_period": 5}}}))
    assert found["tune.scheduler.asha.grace_period"] == "tune.scheduler.asha.grace_period: got 5; expected at most max_t (2)"
    found = issues_of(minimal(tune={"scheduler": {"hyperband": {}}}))
    assert "tune.scheduler" in found
    found = issues_of(minimal(scaling={"resources_per_worker": {"CPU": 0}}))
    assert "cannot request 0 CPUs" in found["scaling.resources_per_worker.CPU"]
    found = issues_of(minimal(scaling={"use_gpu": "yes"}))
    assert found["scaling.use_gpu"] == "scaling.use_gpu: got 'yes'; expected auto, true or false"
    found = issues_of(minimal(seeds=[1, 1]))
    assert "distinct seeds" in found["seeds"]
    found = issues_of(minimal(seeds=3))
    assert found["seeds"].startswith("seeds: got 3; expected a non-empty list of integers such as [0, 1, 2], or {count: 3")
    found = issues_of(minimal(seeds={"count": 0}))
    assert found["seeds.count"] == "seeds.count: got 0; expected an integer >= 1"
    found = issues_of(minimal(tune={"num_samples": 3}))
    assert "1 when no axis is sampled" in found["tune.num_samples"]
    found = issues_of(minimal(axes={"seed": {"grid": [0, 1]}}))
    assert "use the top-level 'seeds' key" in found["axes.seed"]
    found = issues_of({"name": "t", "base": {"method": "uniad", "dataset": "visa"}})
    assert "needs --data-root PATH" in found["base.data_root"]
    found = issues_of({"name": "t", "base": {"method": "uniad", "dataset": "visa", "data_root": "/no/such/folder"}})
    assert "an existing folder" in found["base.data_root"]


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nbase: {method: uniad}\naxes:\n  method_config.lr: {loguniform: [1e-5, 1e-3]}\ntune: {num_samples: 2}\n")
    spec = load_sweep(path)
    lrs = [t.config["method_config"]["lr"] for t in spec.trials()]
    assert len(lrs) == 2 and all(1e-5 <= lr < 1e-3 for lr in lrs)


# ------------------------------------------------------------------ expansion


def test_routing_sweep_expands_to_four_modes_times_seeds():
    spec = load_sweep(SWEEPS / "routing.yaml", assignments=["seeds=[0, 1, 2]"])
    trials = spec.trials()
    assert len(trials) == 4 * 3
    modes = [t.config["method_config"]["routing"] for t in trials]
    assert modes == ["softmax"] * 3 + ["gumbel_top1"] * 3 + ["top1"] * 3 + ["first"] * 3
    assert [t.seed for t in trials[:3]] == [0, 1, 2]
    assert trials[4].label == "routing=gumbel_top1 seed=1"
    assert trials[4].axes == {"method_config.routing": "gumbel_top1", "seed": 1}
    assert trials[0].config == {
        "method": "unilead", "preset": "cpu", "dataset": "embedded", "data_root": None, "classes": None,
        "method_config": {"bottlenecks": [16, 32, 64, 128], "image_size": 160, "eval_size": 112, "epochs": 20,
                          "routing": "softmax"}, "seed": 0,
    }
    assert len({configuration_key(t.config) for t in trials}) == 4


def test_shipped_sweeps_are_valid_and_sized():
    bottlenecks = load_sweep(SWEEPS / "bottlenecks.yaml", assignments=["seeds=[0]"]).trials()
    sets = [t.config["method_config"]["bottlenecks"] for t in bottlenecks]
    assert len(sets) == 10 and sets[0] == [16] and sets[-1] == [16, 32, 64, 128]
    experts = load_sweep(SWEEPS / "experts.yaml", assignments=["seeds=[0]"]).trials()
    moead = [t for t in experts if t.config["method"] == "moead"]
    assert [(t.config["method_config"]["experts"], t.config["method_config"]["top_k"]) for t in moead] == [
        (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)
    ]
    unimmad = [t for t in experts if t.config["method"] == "unimmad"]
    assert len(unimmad) == 16 and {t.config["dataset"] for t in unimmad} == {"embedded_3d"}
    assert {tuple(t.config["method_config"]["modalities"]) for t in unimmad} == {("rgb",), ("rgb", "depth")}
    anomalymoe = [t for t in experts if t.config["method"] == "anomalymoe"]
    assert len(anomalymoe) == 16 and {t.config["method_config"]["component_experts"] for t in anomalymoe} == {0, 2}
    assert len(experts) == 38
    modalities = load_sweep(SWEEPS / "modalities.yaml").trials()
    assert [tuple(t.config["method_config"]["modalities"]) for t in modalities] == [("rgb",)] * 3 + [("rgb", "depth")] * 3
    assert {t.config["dataset"] for t in modalities} == {"embedded_3d"}



def test_leaderboard_sweep_varies_the_method_itself():
    """An axis over ``method`` (a key of base): each method with its own preset, method_config empty."""
    spec = load_sweep(SWEEPS / "leaderboard.yaml")
    trials = spec.trials()
    methods_run = ["uniad", "moead", "unilead", "rd4ad", "dinomaly", "patchcore", "anomalymoe"]
    assert len(trials) == 7 * 3
    assert [t.config["method"] for t in trials] == [m for m in methods_run for _ in range(3)]
    assert [t.seed for t in trials[:3]] == [0, 1, 2]
    assert all(t.config["method_config"] == {} and t.config["preset"] == "cpu" for t in trials)
    assert all(t.config["dataset"] == "embedded" for t in trials)
    assert trials[9].label == "method=rd4ad seed=0" and trials[9].axes == {"method": "rd4ad", "seed": 0}
    assert len({configuration_key(t.config) for t in trials}) == 7
    assert spec.scaling.workers == 0 and spec.scaling.resources_per_worker == {"CPU": 1}


def test_a_method_axis_checks_method_config_against_each_method():
    found = issues_of({"name": "t", "base": {"method": "uniad", "method_config": {"routing": "top1"}},
                       "axes": {"method": {"grid": ["unilead", "uniad"]}}})
    assert "base.method_config.routing" in found and "uniad" in found["base.method_config.routing"]
    found = issues_of({"name": "t", "base": {"method": "uniad"}, "axes": {"method": {"grid": ["uniad", "nosuch"]}}})
    assert found["axes.method"].startswith("axes.method: got 'nosuch'")

def test_sampled_axes_are_deterministic_and_shared_by_seeds(tmp_path):
    data = minimal(
        base={"method": "unilead"},
        axes={
            "method_config.epochs": {"grid": [1, 2]},
            "method_config.lr": {"loguniform": [1e-5, 1e-2]},
            "method_config.batch_size": {"randint": [4, 9]},
            "method_config.routing": {"choice": ["softmax", "top1"]},
        },
        seeds={"count": 2, "start": 5},
        tune={"num_samples": 3, "sample_seed": 7},
    )
    first = parse_sweep(data).trials()
    again = parse_sweep(data).trials()
    assert len(first) == 2 * 3 * 2
    assert [t.config for t in first] == [t.config for t in again]
    for a, b in zip(first[::2], first[1::2]):  # seed is innermost: the pair shares its draws
        assert (a.seed, b.seed) == (5, 6)
        assert a.config["method_config"] == b.config["method_config"]
    lrs = [t.config["method_config"]["lr"] for t in first]
    assert all(1e-5 <= lr < 1e-2 for lr in lrs) and len(set(lrs)) == 6
    assert all(4 <= t.config["method_config"]["batch_size"] < 9 for t in first)
    other = parse_sweep({**data, "tune": {"num_samples": 3, "sample_seed": 8}}).trials()
    assert [t.config["method_config"]["lr"] for t in other] != lrs


def test_command_line_overrides(tmp_path):
    root = tmp_path / "mvtec"
    root.mkdir()
    spec = load_sweep(
        SWEEPS / "routing.yaml",
        overrides={"dataset": "mvtec_ad", "data_root": str(root), "results": str(tmp_path / "store")},
        assignments=["method_config.epochs=2", "scaling.workers=2", "seeds=[3]"],
    )
    assert spec.results == (tmp_path / "store").resolve()
    assert spec.scaling.workers == 2
    trial = spec.trials()[0]
    assert trial.config["dataset"] == "mvtec_ad" and trial.config["data_root"] == str(root.resolve())
    assert trial.config["method_config"]["epochs"] == 2 and trial.seed == 3
    # overriding a swept key replaces its axis
    spec = load_sweep(SWEEPS / "routing.yaml", assignments=["method_config.routing=top1", "seeds=[0]"])
    assert [t.config["method_config"]["routing"] for t in spec.trials()] == ["top1"]
    assert any("axis is dropped" in note for note in spec.notes)


# ------------------------------------------------------------------ run ids


def test_run_id_is_a_stable_hash_of_its_fields():
    args = dict(method="unilead", method_version="1", preset="cpu", dataset_fingerprint="abc",
                hyperparameters={"method_config": {"routing": "top1", "bottlenecks": [16, 32]}, "classes": None}, seed=0)
    first = run_id(**args)
    assert len(first) == 16 and int(first, 16) >= 0
    reordered = {**args, "hyperparameters": {"classes": None, "method_config": {"bottlenecks": [16, 32], "routing": "top1"}}}
    assert run_id(**reordered) == first
    for key, value in [("seed", 1), ("method_version", "2"), ("dataset_fingerprint", "abd"), ("preset", "paper"),
                       ("hyperparameters", {"method_config": {"routing": "first"}})]:
        assert run_id(**{**args, key: value}) != first, key
    # pinned: sha256 of the sorted, whitespace-free JSON; a change would orphan every stored run
    assert first == "54cbe3b5a1f820bd"


def test_trial_run_id_ignores_data_root_and_sweep_but_not_hyperparameters():
    config = {"method": "uniad", "preset": "cpu", "dataset": "embedded", "data_root": "/a", "classes": None,
              "method_config": {"epochs": 1}, "seed": 0}
    moved = {**config, "data_root": "/b"}
    assert trial_run_id(config, "1", "fp") == trial_run_id(moved, "1", "fp")
    assert trial_run_id(config, "1", "fp") != trial_run_id({**config, "method_config": {"epochs": 2}}, "1", "fp")
    assert configuration_key(config) == configuration_key({**moved, "seed": 4})


# ------------------------------------------------------------------ CLI


def test_dry_run_prints_trials_and_bad_file_exits_2(tmp_path, capsys):
    assert main(["sweep", str(SWEEPS / "routing.yaml"), "--dry-run", "--override", "seeds=[0, 1]"]) == 0
    out = capsys.readouterr().out
    assert "8 trials = 4 configuration(s) x 2 seed(s)" in out
    for mode in ("softmax", "gumbel_top1", "top1", "first"):
        assert f"routing={mode}" in out
    assert "pending" in out
    bad = write(tmp_path, {"name": "t", "base": {"method": "uniad", "preset": "fast"}})
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "base.preset: got 'fast'; expected one of uniad's presets: cpu, paper" in err


def test_studies_sweep_each_method_over_its_own_axes():
    data = {
        "name": "t",
        "base": {"method": "moead", "method_config": {"epochs": 2}},
        "studies": [
            {"name": "moead", "axes": {"method_config.experts": {"grid": [2, 4]}}},
            {"name": "unilead", "base": {"method": "unilead", "method_config": {"routing": "top1"}},
             "axes": {"method_config.bottlenecks": {"grid": [[16], [16, 32]]}}},
        ],
        "seeds": [0, 1],
    }
    trials = parse_sweep(data).trials()
    assert [t.index for t in trials] == list(range(8))
    assert [(t.config["method"], t.seed) for t in trials] == [("moead", 0), ("moead", 1)] * 2 + [("unilead", 0), ("unilead", 1)] * 2
    assert trials[0].config["method_config"] == {"epochs": 2, "experts": 2}
    assert trials[4].config["method_config"] == {"epochs": 2, "routing": "top1", "bottlenecks": [16]}
    assert trials[4].label == "study=unilead bottlenecks=16 seed=0"
    # a command-line method option goes to the studies whose method has it, wins over a study's own
    # value, and drops the axis it sets; one no method has is an error naming it
    data["studies"][1]["base"]["method_config"]["epochs"] = 3
    spec = parse_sweep(apply_overrides(data, {}, ["method_config.epochs=1", "method_config.experts=8"]))
    assert {t.config["method_config"]["epochs"] for t in spec.trials()} == {1}
    assert [t.config["method_config"].get("experts") for t in spec.trials()] == [8, 8, None, None, None, None]
    assert any("axis is dropped" in n for n in spec.notes)
    with pytest.raises(SweepError, match="base.method_config.colour"):
        parse_sweep(apply_overrides(data, {}, ["method_config.colour=1"]))
    # a study's mistakes are named where the study says them
    found = issues_of({**data, "studies": [{"base": {"method": "unilead", "method_config": {"routing": "sparse"}}},
                                           {"axes": {"method_config.experts": {"grid": [0]}}}, {"colour": 1}]})
    assert "studies[0].base.method_config.routing" in found and "studies[1].axes.method_config.experts" in found
    assert "studies[2].colour" in found
