"""`masklet run` on a real Ray: outputs, resume, dead workers, failures, and a driver killed mid-job.

One local Ray (2 CPUs, 127.0.0.1) serves the in-process runs of this module; the test-double
pipelines of jobs_plugins decode every video for real and answer with the corpus' ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from jobs_helpers import (
    TESTS,
    alive,
    command_name,
    descendants,
    ground_truth,
    listening_addresses,
    read_output,
    start_local_ray,
    write_config,
)
from jobs_plugins import DELAY_ENV

from masklet.cli import main
from masklet.io import sav
from masklet.io.sinks import list_done
from masklet.jobs.cluster import LOOPBACK_ENV
from masklet.synth.corpus import write_corpus

SHARDS = [f"shard-00000{i}" for i in range(4)]
MASKLET = Path(sys.executable).parent / "masklet"


@pytest.fixture(scope="module")
def local_ray() -> None:
    start_local_ray(metrics_report_interval_ms=1000)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), videos=8, per_shard=2, seed=0, width=64, height=48, frames=6, fps=24.0)
    return root


@pytest.fixture(scope="module")
def reference(local_ray: None, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the ground-truth job: what every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp / "job.yaml", f"{corpus}/shard-*.tar", tmp / "out")
    assert main(["run", str(config)]) == 0
    return tmp / "out"


def test_run_labels_every_shard_and_a_rerun_does_nothing(
    reference: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list_done(str(reference)) == set(SHARDS)
    truth = ground_truth(corpus)
    job = json.loads((reference / "job.json").read_text())
    assert job["model"] == "sam2.1_hiera_t" and job["checkpoint_sha256"] is None and job["init"] == "random"
    assert job["config"]["workers"]["pipeline"] == "jobs_plugins:ground_truth"
    kept = total = 0
    for shard, out in read_output(reference).items():
        assert {row["config_hash"] for row in out["masklets"] + out["videos"]} == {job["config_hash"]}
        assert [v["status"] for v in out["videos"]] == ["ok", "ok"] and all(
            v["frames_processed"] == 6 for v in out["videos"]
        )
        total += len(out["masklets"])
        with tarfile.open(reference / "wds" / f"{shard}.tar") as tar:
            for member in tar.getmembers():
                doc = sav.parse(tar.extractfile(member).read())
                gt = truth[doc.video_id]
                rows = [m for m in out["masklets"] if m["video_key"] == doc.video_id]
                assert doc.masklet_ids == [m["masklet_id"] for m in rows if m["kept"]]
                for masklet_id in doc.masklet_ids:  # kept masks are the ground truth, decoded from RLE
                    assert np.array_equal(doc.masks(masklet_id), gt.masks(masklet_id))
                kept += len(doc.masklet_ids)
    assert 0 < kept < total
    progress = json.loads((reference / "progress.json").read_text())
    assert progress["state"] == "finished"
    assert progress["shards"] == {"total": 4, "skipped": 0, "done": 4, "failed": 0, "running": 0, "pending": 0}
    assert (progress["frames"], progress["masklets"]) == (48, {"total": total, "kept": kept})

    port = ray.nodes()[0]["MetricsExportPort"]  # the workers' counters reach Ray's metrics endpoint
    deadline, frames = time.monotonic() + 20, 0.0
    while frames < 48 and time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        frames = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ray_masklet_frames")
        )
        time.sleep(0.2)
    assert frames >= 48

    capsys.readouterr()
    markers = {p.name: p.read_bytes() for p in (reference / "_done").iterdir()}
    config = reference.parent / "job.yaml"
    assert main(["run", str(config), "workers.count=1"]) == 0  # placement settings are not part of the job
    out = capsys.readouterr().out
    assert "nothing to do: all 4 shards are done" in out
    assert "sam2.1_hiera_t, UNTRAINED seeded random weights (model.init=random)" in out
    assert {p.name: p.read_bytes() for p in (reference / "_done").iterdir()} == markers


def test_dead_worker_is_replaced_and_its_shard_retried(
    reference: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "job.yaml",
        f"{corpus}/shard-*.tar",
        tmp_path / "out",
        workers={"pipeline": "jobs_plugins:crash_once"},
    )
    assert main(["run", str(config)]) == 0
    err = capsys.readouterr().err
    assert "shard shard-000001 attempt 1 failed: worker w" in err and "died" in err and "retrying" in err
    assert json.loads((tmp_path / "out/_done/shard-000001.json").read_text())["extra"]["attempt"] == 2
    ours, theirs = read_output(tmp_path / "out"), read_output(reference)
    for shard in SHARDS:
        for table in ("masklets", "videos"):
            strip = [{k: v for k, v in row.items() if k != "config_hash"} for row in ours[shard][table]]
            assert strip == [{k: v for k, v in row.items() if k != "config_hash"} for row in theirs[shard][table]]


def test_failures_are_recorded_and_the_job_goes_on(
    local_ray: None, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for shard in ("shard-000000", "shard-000001"):
        shutil.copy(corpus / f"{shard}.tar", source)
    good = corpus / "shard-000002.tar"
    with tarfile.open(good) as tar, tarfile.open(source / "bad.tar", "w") as bad:
        for member in tar.getmembers():  # synth-000004 twice, then a video that is not one
            data = tar.extractfile(member).read()
            for name in (member.name, member.name) if member.name.startswith("synth-000004") else ():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                bad.addfile(info, tarfile.io.BytesIO(data))
        info = tarfile.TarInfo("broken.mp4")
        info.size = 64
        bad.addfile(info, tarfile.io.BytesIO(b"\0" * 64))
    config = write_config(
        tmp_path / "job.yaml",
        str(source),
        tmp_path / "out",
        workers={"pipeline": "jobs_plugins:crash_always", "max_attempts": 2},
    )
    assert main(["run", str(config)]) == 1
    out = capsys.readouterr().out
    assert "shards:   2 done, 1 failed" in out
    assert "shard-000001 after 2 attempt(s): worker w" in out
    assert "bad/broken: VideoDecodeError" in out and "duplicate key" in out
    assert list_done(str(tmp_path / "out")) == {"shard-000000", "bad"}
    progress = json.loads((tmp_path / "out/progress.json").read_text())
    assert progress["state"] == "failed"
    assert [(f["shard_id"], f["attempts"]) for f in progress["failed_shards"]] == [("shard-000001", 2)]
    rows = read_output(tmp_path / "out")["bad"]["videos"]
    assert [(r["video_key"], r["status"], r["error_type"]) for r in rows][0] == ("synth-000004", "ok", None)
    assert [(r["status"], r["error_type"]) for r in rows[1:]] == [
        ("error", "VideoError"),
        ("error", "VideoDecodeError"),
    ]
    assert rows[1]["original_key"] == "synth-000004" and rows[1]["video_key"].startswith("synth-000004_2-")
    listed = sorted((v["shard_id"], v["video_key"]) for v in progress["failed_videos"])
    assert listed == [("bad", "broken"), ("bad", rows[1]["video_key"])]


def test_a_worker_that_cannot_start_stops_the_job_with_exit_2(
    local_ray: None, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "job.yaml", f"{corpus}/shard-*.tar", tmp_path / "out", workers={"pipeline": "jobs_plugins:broken"}
    )
    assert main(["run", str(config)]) == 2
    captured = capsys.readouterr()
    assert "could not start: RuntimeError: this pipeline cannot be built" in captured.err
    assert "no worker could start: RuntimeError: this pipeline cannot be built" in captured.out
    assert list_done(str(tmp_path / "out")) == set()


def test_sigterm_stops_the_job_cleanly_and_a_rerun_resumes(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What Kubernetes, Slurm and `ray job stop` send: the driver stops as on Ctrl-C, saves its progress,
    says how to resume, and exits 143; no traceback, no native stack dump, no worker left. While it
    ran, the same job started again was refused: it would have labelled every shard twice."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", f"{corpus}/shard-*.tar", out, workers={"count": 1})
    env = {**os.environ, DELAY_ENV: "0.2"}
    driver = subprocess.Popen(
        [str(MASKLET), "run", str(config)], cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    tree: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not list_done(str(out)) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = {pid: command_name(pid) for pid in descendants(driver.pid)}
        assert main(["run", str(config)]) == 2
        holder = json.loads((out / "progress.json").read_text())["run_id"]
        assert f"another run (run {holder} on " in capsys.readouterr().err
        driver.send_signal(signal.SIGTERM)
        log = driver.communicate(timeout=60)[0].decode()
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == 143, log
    assert "masklet run: stopped by SIGTERM; run the same command again to resume" in log, log
    assert "Traceback" not in log and "Fatal Python error" not in log and "*** SIG" not in log, log
    assert json.loads((out / "progress.json").read_text())["state"] == "interrupted"
    workers = {pid for pid, name in tree.items() if "ShardWorker" in name}
    deadline = time.monotonic() + 60
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(workers), "a worker outlived its driver"
    done = list_done(str(out))
    assert 1 <= len(done) < len(SHARDS), log
    rerun = subprocess.run([str(MASKLET), "run", str(config)], cwd=TESTS, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} shard(s) already done, {len(SHARDS) - len(done)} to run" in rerun.stdout


def test_driver_killed_mid_job_then_rerun_equals_an_uninterrupted_run(
    reference: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL `masklet run` (embedded Ray) after its first shard, rerun: same outputs, no shard redone."""
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "job.yaml", f"{corpus}/shard-*.tar", out, workers={"count": 1}, ray={"dashboard": True}
    )
    env = {**os.environ, DELAY_ENV: "0.7"}
    env.pop(LOOPBACK_ENV)  # masklet keeps its embedded Ray on 127.0.0.1 by itself
    driver = subprocess.Popen(
        [str(MASKLET), "run", str(config)], cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not list_done(str(out)) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = {pid: command_name(pid) for pid in descendants(driver.pid)}
        listening = listening_addresses(tree)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        log = driver.stdout.read().decode()
        assert driver.returncode == -signal.SIGKILL, log
        # the log holds what a user can act on: no colour codes off a terminal, no warning on every run
        assert "\x1b[" not in log and "Token authentication" not in log, log

        # every Ray process of the driver listened on loopback only (dashboard included)
        assert listening and all(a.startswith("127.0.0.1:") for a in listening), listening
        # the workers stop with their driver's Ray; wait for them, then clear what lingers (Ray's agents)
        workers = {pid for pid, name in tree.items() if "ShardWorker" in name}
        assert workers, tree
        deadline = time.monotonic() + 60
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(workers), "a worker outlived its driver's Ray"
        before = {p.name: p.read_bytes() for p in (out / "_done").iterdir()}
        assert 1 <= len(before) < len(SHARDS), log
    finally:
        driver.kill()
        driver.wait()
        for pid in alive(set(tree)):
            if command_name(pid) == tree[pid]:  # still the process the driver started
                os.kill(pid, signal.SIGKILL)

    capsys.readouterr()
    assert main(["run", str(config)]) == 0  # resumes on this module's Ray: placement is not part of the job
    assert f"{len(before)} shard(s) already done, {len(SHARDS) - len(before)} to run" in capsys.readouterr().out
    after = read_output(out)
    assert {name: after[name.removesuffix(".json")]["marker"] for name in before} == before  # not rewritten
    expected = read_output(reference)
    for shard in SHARDS:
        for part in ("masklets", "videos", "wds"):
            assert after[shard][part] == expected[shard][part], (shard, part)


def test_run_reads_and_writes_s3(
    local_ray: None,
    s3_bucket: str,
    s3_endpoint: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Corpus and outputs on an S3 endpoint named in the config's storage section (no AWS_ENDPOINT_URL);
    the workers get the credentials through ray.runtime_env."""
    write_corpus(f"s3://{s3_bucket}/corpus", videos=4, per_shard=2, seed=3, width=64, height=48, frames=6, fps=24.0)
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setattr(fsspec.config, "conf", {})  # what the job configures stays in this test
    out = f"s3://{s3_bucket}/out"
    config = write_config(
        tmp_path / "job.yaml",
        f"s3://{s3_bucket}/corpus",
        out,
        ray={"runtime_env": {"env_vars": aws}},
        storage={"s3": {"endpoint_url": s3_endpoint}},
    )
    assert main(["run", str(config)]) == 0
    printed = capsys.readouterr().out
    for line in (
        f"input:    2 shard(s) (wds) at s3://{s3_bucket}/corpus",
        "0 shard(s) already done, 2 to run",
        "ray:      the Ray this process is connected to (2 CPU)",
        "workers:  2 worker(s), each 1 CPU",
        "shards:   2 done, 0 failed, 0 skipped (done before), 2 in all",
        "videos:   4 ok, 0 failed",
        "frames:   24 annotated frames",
        f"outputs:  {out}/masklets, {out}/videos, {out}/wds",
    ):
        assert line in printed
    assert list_done(out) == {"shard-000000", "shard-000001"}
    fs = fsspec.filesystem("s3")
    assert json.loads(fs.cat_file(f"{s3_bucket}/out/progress.json"))["state"] == "finished"
    rows = pq.read_table(fs.open(f"{s3_bucket}/out/videos/shard-000001.parquet", "rb")).to_pylist()
    assert [(r["video_key"], r["status"], r["frames_processed"]) for r in rows] == [
        ("synth-000002", "ok", 6),
        ("synth-000003", "ok", 6),
    ]
    assert main(["run", str(config)]) == 0
    assert "nothing to do: all 2 shards are done" in capsys.readouterr().out


def test_real_pipeline_end_to_end_on_s3(
    local_ray: None,
    s3_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The built-in automatic pipeline with a real (tiny preset, random weights) model and 2 workers,
    corpus and outputs on S3; thresholds off so random weights still give masklets to check."""
    from pycocotools import mask as coco

    from masklet.io.outputs import read_shard

    write_corpus(f"s3://{s3_bucket}/corpus", videos=4, per_shard=2, seed=5, width=64, height=48, frames=8, fps=24.0)
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    out = f"s3://{s3_bucket}/out"
    config = write_config(
        tmp_path / "job.yaml",
        f"s3://{s3_bucket}/corpus",
        out,
        source={"fps": 6},
        model={"name": "sam2.1_hiera_t", "image_size": 128},
        pipeline={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_objects": 4},
        workers={"pipeline": None},
        ray={"runtime_env": {"env_vars": {**env, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}}},
    )
    assert main(["run", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline: auto (masklet.pipelines.autolabel:build_pipeline)" in printed
    assert "shards:   2 done, 0 failed" in printed and "videos:   4 ok, 0 failed" in printed
    assert list_done(out) == {"shard-000000", "shard-000001"}
    masklets = 0
    for shard_id in ("shard-000000", "shard-000001"):
        shard = read_shard(out, shard_id)
        assert [v.status for v in shard.videos] == ["ok", "ok"]
        for record in shard.masklets:
            masklets += 1
            assert (record.height, record.width) == (48, 64)
            assert set(record.frame_indices) <= {0, 4}  # 8 frames at 24 fps annotated at 6 fps
            for counts in record.rle:
                if counts:
                    mask = coco.decode({"size": [48, 64], "counts": counts.encode()})
                    assert mask.shape == (48, 64) and mask.any()
    assert masklets > 0
    assert main(["run", str(config)]) == 0
    assert "nothing to do: all 2 shards are done" in capsys.readouterr().out
