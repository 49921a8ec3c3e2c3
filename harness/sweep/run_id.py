"""Run ids of a sweep's trials, resolved from the registry and the data layer (issue #5, item 4).

The identity itself (canonical JSON, ``run_id``, ``configuration_key``) lives in harness.identity,
below the result store and the report; this module adds what needs the method registry and the
datasets: method versions, dataset fingerprints and ``resolve_run_ids`` for a sweep's trials.
"""

from __future__ import annotations

from harness.identity import canonical_json, trial_run_id


def method_version(method: str) -> str:
    """The registered method's version (bumped by the method when what it computes changes)."""
    import methods

    return str(methods.get(method).version)


def dataset_fingerprint(config: dict) -> str:
    """The data layer's fingerprint of exactly the files a trial config reads (as the training loop computes it):
    its dataset, root, classes, expected card and dataset options (a subset of Real-IAD's views reads fewer files)."""
    from harness.data import load_dataset
    from harness.training.trial_config import dataset_arguments

    return load_dataset(**dataset_arguments(config)).fingerprint()


def resolve_run_ids(trials: list) -> None:
    """Fill ``trial.run_id`` for every trial; versions and fingerprints are computed once each.

    Indexing a dataset reads its folder tree (and builds the embedded dataset on first use), so the
    driver calls this once before launching trials; ``harness sweep --dry-run`` only with
    ``--resolve-ids``. The dataset options reach the id twice: through the fingerprint, and as a
    hyperparameter of the config when it has them (a config without options hashes as before they existed).
    """
    from harness.training.trial_config import dataset_arguments

    versions: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    for trial in trials:
        config = trial.config
        method = config["method"]
        if method not in versions:
            versions[method] = method_version(method)
        data_key = canonical_json(dataset_arguments(config))
        if data_key not in fingerprints:
            fingerprints[data_key] = dataset_fingerprint(config)
        trial.run_id = trial_run_id(config, versions[method], fingerprints[data_key])
