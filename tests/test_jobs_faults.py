"""Faults of the machine on a real local Ray: never committed as the input's fault, retried to the
same outputs as a clean run (tests/test_scheduler.py covers the queue's logic on simulated workers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from jobs_helpers import read_output, start_local_ray, write_config

from masklet.cli import main
from masklet.synth.corpus import write_corpus


@pytest.fixture(scope="module")
def local_ray() -> None:
    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), videos=6, per_shard=2, seed=0, width=64, height=48, frames=6, fps=24.0)
    return root


@pytest.fixture(scope="module")
def clean(local_ray: None, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("clean")
    assert main(["run", str(write_config(tmp / "job.yaml", f"{corpus}/shard-*.tar", tmp / "out"))]) == 0
    return read_output(tmp / "out")


def _rows(output: dict) -> dict:
    """The outputs that must not depend on faults: rows (no timing, no config hash) and the tars."""
    strip = ("config_hash",)
    return {
        shard: (
            [{k: v for k, v in r.items() if k not in strip} for r in parts["masklets"]],
            [{k: v for k, v in r.items() if k not in strip} for r in parts["videos"]],
            parts["wds"],
        )
        for shard, parts in output.items()
    }


@pytest.mark.parametrize(
    ("fault", "workers", "expected"),
    [
        ("sick", {"count": 2}, "RuntimeError: CUDA error: an illegal memory access was encountered; retrying"),
        ("oom", {"count": 1}, "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB; retrying"),
        ("hang", {"count": 1, "video_timeout": 4}, "ran past workers.video_timeout (4 s); retrying"),
    ],
)
def test_a_fault_of_the_machine_is_retried_to_the_clean_outputs(
    fault: str, workers: dict, expected: str, clean: dict, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(
        tmp_path / "job.yaml",
        f"{corpus}/shard-*.tar",
        tmp_path / "out",
        workers={"pipeline": f"jobs_plugins:{fault}", **workers},
    )
    assert main(["run", str(config)]) == 0
    captured = capsys.readouterr()
    assert expected in captured.err
    assert "0 failed" in captured.out and "1 restart(s)" in captured.out
    assert _rows(read_output(tmp_path / "out")) == _rows(clean)  # no error row, nothing lost or doubled
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["workers"]["restarts"] == 1 and progress["workers"]["lost"] == 0
