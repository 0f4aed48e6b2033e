"""What `masklet run` decides before Ray starts, and how progress is shown; no Ray here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fsspec
import pytest
import s3fs
import torch
from jobs_helpers import write_config

from masklet.cli import main
from masklet.config import load_config, validate_config
from masklet.io import storage
from masklet.io.storage import RetryPolicy
from masklet.jobs.cluster import Cluster, ClusterError, plan_layout
from masklet.jobs.driver import plan_job
from masklet.jobs.job_record import JobConflict, JobRecord, claim_output, read_job
from masklet.jobs.progress import Progress
from masklet.jobs.shard import ShardResult
from masklet.synth.corpus import write_corpus

# untrained weights, asked for by name: these tests run no model
BASE = {"source": {"uri": "in/shard-*.tar"}, "output": {"uri": "out"}, "model": {"init": "random"}}


def _config(**sections: dict) -> dict:
    data = json.loads(json.dumps(BASE))
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def test_config_hash_leaves_out_placement_only() -> None:
    base = validate_config(_config()).content_hash()
    placement = _config(
        ray={"address": "auto", "dashboard": False, "runtime_env": {"pip": ["x"]}},
        workers={"count": 8, "num_gpus": 0.5, "num_cpus": 4, "max_attempts": 9},
        source={"prefetch_frames": 4},
        output={"uri": "./out/"},
    )
    assert validate_config(placement).content_hash() == base
    for changed in (
        _config(workers={"pipeline": "my.module:build"}),
        _config(source={"fps": 12}),
        _config(output={"write_video": True}),
        _config(model={"name": "sam2.1_hiera_s"}),
    ):
        assert validate_config(changed).content_hash() != base


def test_output_root_of_another_job_is_refused_unless_forced(tmp_path: Path) -> None:
    first = validate_config(_config())
    second = validate_config(_config(source={"fps": 12}))
    root = str(tmp_path / "out")
    assert claim_output(root, JobRecord.for_config(first, None), force=False, committed=False) == "new"
    assert claim_output(root, JobRecord.for_config(first, None), force=False, committed=True) == "resume"
    with pytest.raises(JobConflict, match=r"settings changed: source\.fps.*--force"):
        claim_output(root, JobRecord.for_config(second, None), force=False, committed=True)
    with pytest.raises(JobConflict, match="the checkpoint changed"):
        claim_output(root, JobRecord.for_config(first, "ab" * 32), force=False, committed=True)
    assert claim_output(root, JobRecord.for_config(second, None), force=True, committed=True) == "forced"
    job = read_job(root)
    assert job["config_hash"] == second.content_hash()
    assert [h["config_hash"] for h in job["history"]] == [first.content_hash()]


def test_job_json_holds_no_secret(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard-000000.tar").write_bytes(b"\0" * 1024)
    data = _config(source={"uri": str(tmp_path / "in" / "shard-*.tar")}, output={"uri": str(tmp_path / "out")})
    plan_job(validate_config({**data, "storage": {"file": {"token": "hunter2"}}}))
    text = (tmp_path / "out" / "job.json").read_text()
    assert "hunter2" not in text and json.loads(text)["config"]["storage"] == {"file": {"token": "<redacted>"}}
    assert plan_job(validate_config(data)).claim == "resume"  # storage is placement: the same job


def test_a_job_that_committed_no_shard_locks_nothing(tmp_path: Path) -> None:
    """A job refused on its workers (no CUDA, a GPU count the cluster lacks) leaves job.json but no
    shard: the corrected rerun replaces it without --force."""
    broken = validate_config(_config(model={"device": "cuda"}))
    fixed = validate_config(_config())
    root = str(tmp_path / "out")
    assert claim_output(root, JobRecord.for_config(broken, None), force=False, committed=False) == "new"
    assert claim_output(root, JobRecord.for_config(fixed, None), force=False, committed=False) == "replaced"
    job = read_job(root)
    assert job["config_hash"] == fixed.content_hash() and job["history"] == []


class _Pickled:
    """Any class: unpickling it would run its module's code."""


def test_run_refuses_before_any_work_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), videos=1, per_shard=1, seed=0, width=64, height=48, frames=2, fps=24.0)
    out = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", f"{corpus}/shard-*.tar", out)
    unsafe, foreign = tmp_path / "unsafe.pt", tmp_path / "foreign.pt"
    torch.save({"model": {"step": _Pickled()}}, unsafe)  # an object a weights-only load refuses
    torch.save({"model": {"head.weight": torch.zeros(2)}}, foreign)  # keys of another model
    cases = [
        ([str(tmp_path / "nothing.yaml")], "config file"),
        ([str(config), f"source.uri={tmp_path}/missing/*.tar"], "no .tar files match"),
        ([str(config), "workers.pipeline=no_such_module:build"], "cannot import 'no_such_module'"),
        ([str(config), "workers.pipeline=jobs_plugins:no_such_factory"], "has no function 'no_such_factory'"),
        ([str(config), "source.format=frames", f"source.uri={corpus}", "output.write_video=true"], "write_video"),
        ([str(config), "model.init=checkpoint", "model.checkpoint=" + str(tmp_path / "missing.pt")], "missing.pt"),
        ([str(config), "model.init=checkpoint"], "sam2.1_hiera_t has no weights: set model.checkpoint to 'official'"),
        (["--config-json", "[1]"], "must be a JSON object"),
        ([str(config), "ray.address=127.0.0.1:1"], "cannot reach the Ray cluster at ray.address='127.0.0.1:1'"),
        ([str(config), "model.device=cuda:7"], "model.device 'cuda:7': this machine has"),
        ([str(config), "model.init=checkpoint", f"model.checkpoint={unsafe}"], "model.checkpoint: checkpoint"),
        ([str(config), "model.init=checkpoint", f"model.checkpoint={unsafe}"], "refused: it holds pickled objects"),
        ([str(config), "model.init=checkpoint", f"model.checkpoint={foreign}"], "1 unexpected"),
    ]
    for args, message in cases:
        assert main(["run", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (out / "job.json").exists()  # nothing claimed: the corrected rerun just runs
    other = JobRecord.for_config(load_config(str(config), ["source.fps=12"]), None)
    claim_output(str(out), other, force=False, committed=False)
    (out / "_done").mkdir()
    (out / "_done" / "shard-000000.json").write_text("{}")  # the other job committed a shard here
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another job (settings changed: source.fps" in err
    assert f"delete {out} to start over" in err


def test_layout_one_worker_per_gpu_or_per_cpu_slot() -> None:
    workers = validate_config(_config()).workers
    gpus = Cluster(False, "cluster", {"CPU": 32.0, "GPU": 4.0})
    cpus = Cluster(True, "laptop", {"CPU": 8.0})
    assert (plan_layout(workers, gpus, pending=100).count, plan_layout(workers, gpus, pending=100).num_gpus) == (4, 1)
    assert plan_layout(workers, gpus, pending=3).count == 3
    assert (plan_layout(workers, cpus, pending=100).count, plan_layout(workers, cpus, pending=100).num_gpus) == (8, 0)
    half = validate_config(_config(workers={"num_gpus": 0.5})).workers
    assert plan_layout(half, gpus, pending=100).count == 8
    with pytest.raises(ClusterError, match="1 GPU per worker, the cluster has 0"):
        plan_layout(validate_config(_config(workers={"num_gpus": 1})).workers, cpus, pending=1)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _result(shard: str, worker: str, frames: int, failed: int = 0) -> ShardResult:
    counts = {"videos": 2, "videos_error": failed, "frames_processed": frames, "masklets": 3, "masklets_kept": 2}
    errors = [("bad", "VideoDecodeError", "truncated")] * failed
    return ShardResult(shard, counts, {"wall": 1.0}, errors, worker=worker)


def test_progress_live_line_on_a_terminal_and_log_lines_elsewhere(tmp_path: Path) -> None:
    terminal = _Terminal()
    progress = Progress(str(tmp_path), "run", "hash", total=4, skipped=1, out=terminal)
    progress.worker_update("w0", {"shard_id": "s1", "videos": 1, "frames": 6, "masklets": 2, "masklets_kept": 1})
    progress.tick()
    assert terminal.getvalue().startswith("\r  0%|")  # tqdm's bar, then the counts
    assert "| 0/3 shards, 1 skipped (done before) | ETA unknown | " in terminal.getvalue()
    assert "| 6 frames | videos 1 ok | masklets 1 kept of 2 | 0:00:00" in terminal.getvalue()
    progress.shard_done(_result("s1", "w0", frames=12, failed=1))
    progress.shard_failed("s2", 3, "worker w1 died")
    progress.tick()  # shards moved: progress.json is rewritten
    assert "\rshard s2 failed after 3 attempt(s): worker w1 died\n" in terminal.getvalue()  # above the bar
    progress.close_line()
    assert terminal.getvalue().endswith("\n")

    plain = io.StringIO()
    logged = Progress(str(tmp_path / "other"), "run", "hash", total=2, skipped=0, out=plain, log_every=3600)
    logged.tick()
    logged.tick()  # within log_every: no second line
    assert plain.getvalue().count("\n") == 1 and "\r" not in plain.getvalue()
    assert plain.getvalue().startswith("[0:00:00] shards 0/2 (0%) | ETA unknown | rates unknown | 0 frames")
    logged.shard_done(_result("t1", "w0", frames=12))
    assert plain.getvalue().splitlines()[-1].endswith("shard t1 done: 2 videos, 12 frames in 1.0 s (1/2, 50%)")

    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["state"] == "running" and saved["percent"] == pytest.approx(33.33)
    assert saved["shards"] == {"total": 4, "skipped": 1, "done": 1, "failed": 1, "running": 0, "pending": 1}
    assert saved["videos"] == {"ok": 1, "failed": 1} and saved["frames"] == 12
    assert saved["failed_shards"] == [{"shard_id": "s2", "attempts": 3, "error": "worker w1 died"}]
    assert saved["failed_videos"] == [{"shard_id": "s1", "video_key": "bad", "error": "VideoDecodeError: truncated"}]


def test_config_command_prints_the_config_hash(capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).parents[1] / "configs/demo.yaml"
    assert main(["config", str(config)]) == 0
    assert f"# config hash: {load_config(str(config)).content_hash()} " in capsys.readouterr().out


def test_an_unreachable_source_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(storage, "DEFAULT_RETRY", RetryPolicy(attempts=2, base_delay=0.0))
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(fsspec.config.conf.get("s3", {})))  # restored after
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "x")
    s3fs.S3FileSystem.clear_instance_cache()
    config = write_config(tmp_path / "job.yaml", "s3://bucket/in/*.tar", tmp_path / "out")
    assert main(["run", str(config), "storage.s3.endpoint_url=http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "list s3://bucket/in/*.tar failed after 2 attempts" in err and "Traceback" not in err
    s3fs.S3FileSystem.clear_instance_cache()
