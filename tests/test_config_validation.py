"""One validation of a trial's configuration: method config typed and ranged against each method's
schema, classes and presets known, duplicate YAML keys and non-UTF-8 files rejected."""

from __future__ import annotations

import pytest
import yaml

import methods
from harness.config import ConfigError, ConfigIssue, ConfigProblems, load_yaml, parse_assignment
from harness.sweep.spec import SweepError, parse_sweep
from harness.training.trial_config import TrialConfig, trial_issues
from methods.config_schema import Choice, Int, ListOf, Nullable, Real, config_issues, method_config_issues


def sweep_issues(method_config: dict | None = None, axes: dict | None = None, **base) -> dict[str, str]:
    data = {"name": "t", "base": {"method": "unilead", "method_config": method_config or {}, **base}, "axes": axes or {}}
    with pytest.raises(SweepError) as caught:
        parse_sweep(data, source="s.yaml")
    return {issue.key: str(issue) for issue in caught.value.issues}


def test_every_preset_key_of_every_method_has_a_schema_entry_and_both_presets_validate():
    assert methods.available() and not methods.unavailable()
    for name in methods.available():
        cls = methods.get(name)
        for preset, values in cls.presets.items():
            missing = sorted(set(values) - set(cls.config_schema))
            assert not missing, f"{name}/{preset}: keys without a config_schema entry: {missing}"
            assert method_config_issues(name, preset, {}) == []


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("epochs", -3, "an integer >= 1"),
        ("epochs", 0, "an integer >= 1"),
        ("epochs", -1, "an integer >= 1"),
        ("epochs", "three", "an integer >= 1"),
        ("epochs", True, "an integer >= 1"),
        ("epochs", 2.5, "an integer >= 1"),
        ("lr", "fast", "a real number >= 0"),
        ("lr", -1e-3, "a real number >= 0"),
        ("routing", "sparse_top2", "one of softmax, gumbel_top1, top1, first"),
        ("bottlenecks", [16, 0], "each an integer >= 1"),
        ("bottlenecks", [], "at least 1 item"),
        ("keep_ffn", "yes", "true or false"),
        ("neighbour_window", "wide", "an integer >= 1 or one of auto or null"),
        ("score_weights", [1, 1], "exactly 3 item"),
        ("backbone", "no_such_net", "a timm model name"),
        ("backbone_levels", [1, 9], "levels of tf_efficientnet_lite0, which has 5 (0 to 4)"),
        ("token_stride", 32, "the stride of one of the chosen levels, 4, 8, 16"),
    ],
)
def test_bad_method_config_values_are_rejected_by_the_sweep_dry_run_validation(key, value, expected):
    found = sweep_issues({key: value})
    assert f"base.method_config.{key}" in found, found
    message = found[f"base.method_config.{key}"]
    assert message.startswith(f"base.method_config.{key}: got {value!r}; expected ") and expected in message


def test_every_problem_is_listed_at_once_with_key_value_and_expectation():
    found = sweep_issues({"epochs": -3, "lr": "fast"}, axes={"method_config.routing": {"grid": ["softmax", "sparse_top2"]}},
                         classes=["nosuch"])
    assert set(found) == {"base.method_config.epochs", "base.method_config.lr", "axes.method_config.routing", "base.classes"}
    assert found["base.classes"] == (
        "base.classes: got 'nosuch'; expected a class of dataset embedded: brick, grass, gravel, tissue, coins, coffee"
    )


def test_null_only_where_the_schema_allows_it_and_rules_across_keys():
    assert sweep_issues({"epochs": None})["base.method_config.epochs"].endswith("expected an integer >= 1")
    assert "base.method_config.grad_clip" not in sweep_issues({"grad_clip": None, "epochs": 0})
    found = sweep_issues({"num_heads": 3})
    assert "a divisor of hidden_dim" in found["base.method_config.num_heads"]
    with pytest.raises(SweepError, match="top_k: got 5; expected at most experts"):
        parse_sweep({"name": "t", "base": {"method": "moead", "method_config": {"top_k": 5}}})


def test_vocabulary_describes_what_it_expects():
    schema = {"n": Int(min=1), "x": Real(positive=True), "mode": Choice("a", "b"), "w": ListOf(Int(min=1)), "c": Nullable(Real(min=0))}
    issues = config_issues({"n": 0, "x": -1.0, "mode": "c", "w": [1, -2], "c": None}, schema)
    assert [str(i) for i in issues] == [
        "n: got 0; expected an integer >= 1",
        "x: got -1.0; expected a real number > 0",
        "mode: got 'c'; expected one of a, b",
        "w: got [1, -2]; expected a list of at least 1 item(s), each an integer >= 1",
    ]


def test_trial_config_refuses_an_untrained_model_config():
    with pytest.raises(ConfigError, match=r"method_config.epochs: got -1; expected an integer >= 1"):
        TrialConfig.from_dict({"method": "uniad", "method_config": {"epochs": -1}})
    keys = {issue.key for issue in trial_issues({"method": "uniad", "preset": "fast", "dataset": "nosuch", "seed": -1, "colour": 1})}
    assert keys == {"colour", "preset", "dataset", "seed"}


def test_duplicate_yaml_keys_are_named_with_their_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\nbase:\n  method: uniad\n  method: unilead\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: line 4, column 3: invalid YAML: duplicate key 'method' \(first given on line 3\)"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_assignment("x={a: 1, a: 2}")


def test_non_utf8_file_is_an_error_that_says_so(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 9 is 0xe9\)"):
        load_yaml(path)


def test_yaml_reads_scientific_notation_as_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"lr": "placeholder"}).replace("placeholder", "1e-3"))
    assert load_yaml(path) == {"lr": 0.001}


def test_dataset_cards_reject_duplicate_keys_too(tmp_path):
    from harness.data.cards import CardError, load_card

    path = tmp_path / "card.yaml"
    path.write_text("name: x\nlayout: mvtec_ad\nclasses:\n  a: {}\n  a: {}\n")
    with pytest.raises(CardError, match=r"card\.yaml: line 5, column 3: invalid YAML: duplicate key 'a'"):
        load_card(path)


@pytest.mark.parametrize("error_type", [ConfigProblems, SweepError])
def test_config_problems_cross_processes_intact(error_type):
    """A Ray worker's error is pickled to the driver: it must come back with its message and issues."""
    import pickle

    error = error_type("trial config", [ConfigIssue("method_config.backbone", "none", "a timm model name")])
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is error_type and str(back) == str(error) and back.issues == error.issues
