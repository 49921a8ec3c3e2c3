"""A sweep on a two-node Ray cluster simulated on this machine with ray.cluster_utils.Cluster.

The Train workers of the one cell each need 1.5 CPUs and each node has 2, so Ray must place them on
different nodes: DDP runs across raylets, and the trial (on either node) writes the store by path.
"""

from __future__ import annotations

import pytest

from harness.data.fixtures import write_fixture
from ray_sweeps import hidden_files, patched_environ, private_ray_environ, run_sweep_file, runs_by_id, write_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the cluster needs its own Ray instance
    with patched_environ(private_ray_environ()):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        yield cluster
        ray.shutdown()
        cluster.shutdown()


def test_sweep_on_two_nodes_writes_one_complete_row(two_node_cluster, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("HARNESS_FEATURE_CACHE", str(tmp_path / "features"))
    root = write_fixture("generic", tmp_path / "fixture", size=64).root
    results = tmp_path / "results"
    path = write_sweep(tmp_path, data_root=root, results=results, name="two-node", workers=2, cpu_per_worker=1.5)

    assert run_sweep_file(path, address=two_node_cluster.address) == 0

    assert len([node for node in ray.nodes() if node["Alive"]]) == 2
    (row,) = runs_by_id(results).values()
    assert row["status"] == "complete", row.get("failure_reason")
    assert row["workers"] == 2 and row["sweep"] == "two-node"
    assert (results / "predictions" / f"{row['run_id']}.parquet").exists()
    assert hidden_files(results) == []
