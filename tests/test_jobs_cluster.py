"""Nodes come and go: a job on a several-node Ray cluster on this machine (`ray.cluster_utils.Cluster`,
every node on 127.0.0.1) survives a node killed mid-job and uses a node added mid-job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import TESTS, read_output, write_config
from jobs_plugins import DELAY_ENV
from ray.cluster_utils import Cluster

from masklet.cli import main
from masklet.io.sinks import list_done
from masklet.jobs.cluster import LOOPBACK_ENV
from masklet.synth.corpus import write_corpus

SHARDS = 10
MASKLET = Path(sys.executable).parent / "masklet"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), videos=2 * SHARDS, per_shard=2, seed=4, width=64, height=48, frames=6, fps=24.0)
    return root


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A head that runs no worker (0 CPUs) and two one-CPU nodes."""
    assert os.environ[LOOPBACK_ENV] == "0", "tests/conftest.py keeps every test Ray on 127.0.0.1"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _job(tmp: Path, corpus: Path, cluster: Cluster, delay: float) -> Path:
    env = {"PYTHONPATH": str(TESTS), DELAY_ENV: str(delay)}
    return write_config(
        tmp / "job.yaml",
        f"{corpus}/shard-*.tar",
        tmp / "out",
        ray={"address": cluster.address, "runtime_env": {"env_vars": env}},
        workers={"count": None, "num_cpus": 1},
    )


def _masklets(root: Path) -> dict:
    return {
        shard: [{k: v for k, v in r.items()} for r in parts["masklets"]] for shard, parts in read_output(root).items()
    }


def test_a_node_killed_mid_job_loses_nothing_and_a_node_added_gets_work(
    cluster: Cluster, corpus: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    clean.mkdir()
    assert main(["run", str(_job(clean, corpus, cluster, delay=0.0))]) == 0
    victim = next(node for node in cluster.worker_nodes)
    faulty = tmp_path / "faulty"
    faulty.mkdir()
    # 4 s a video: the job outlasts the new nodes' start and two of the driver's looks at the cluster (every
    # 10 s); at 2 s, on a loaded machine, the job now and then ended without the cluster growing
    config = _job(faulty, corpus, cluster, delay=4.0)
    # the driver in a process of its own, as `masklet run` is: the cluster is changed from this one
    driver = subprocess.Popen(
        [str(MASKLET), "run", str(config)], cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list_done(str(faulty / "out")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.remove_node(victim)
        for _ in range(2):  # one more node than before: the job grows to 3 workers
            cluster.add_node(num_cpus=1)
        log, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, log
    assert "died" in log and "retrying" in log  # the dead node's shards were retried elsewhere
    assert "the cluster grew: worker w2 added" in log
    assert list_done(str(faulty / "out")) == {f"shard-{i:06d}" for i in range(SHARDS)}
    markers = [json.loads(p.read_text()) for p in (faulty / "out" / "_done").glob("*.json")]
    assert "w2" in {m["extra"]["worker"] for m in markers}  # the added worker got work
    assert _masklets(faulty / "out") == _masklets(clean / "out")  # 0 lost, 0 duplicated
