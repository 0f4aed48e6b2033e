"""`masklet submit / status / logs / stop`: run a job on a Ray cluster through the Ray Jobs API.

The config is validated here and sent whole, resolved, inside the entrypoint
(`masklet run --config-json '...'`, with `ray.address=auto` so the job's driver joins the cluster it
runs on); a local config file never has to exist on the cluster. Its `storage` section, which may
hold credentials, goes in the job's environment (`MASKLET_STORAGE`) instead: a command line is shown
by `ray job list`, `masklet status` and the dashboard. Code the job needs beyond the
installed masklet (a plug-in pipeline) travels in the runtime env: `ray.runtime_env` in the config,
then `--working-dir`, `--pip`, `--env` on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from masklet.config import STORAGE_ENV, ConfigError, JobConfig, redacted
from masklet.io import storage

ADDRESS_ENV = "RAY_ADDRESS"


class JobsApiError(ValueError):
    """The job server refused a request (e.g. no job with that id)."""


@dataclass(frozen=True)
class Submission:
    entrypoint: str
    runtime_env: dict[str, Any]
    warnings: tuple[str, ...] = ()

    def shown_runtime_env(self) -> dict[str, Any]:
        """The runtime env to print, secrets redacted (the storage section's too)."""
        shown = redacted(self.runtime_env)
        env_vars = shown.get("env_vars", {})
        if STORAGE_ENV in env_vars:
            env_vars[STORAGE_ENV] = json.dumps(redacted(json.loads(env_vars[STORAGE_ENV])))
        return shown


def _local_paths(config: JobConfig, working_dir: str | None) -> list[str]:
    """Warnings for local paths a cluster may not see; a relative one without a working_dir is refused,
    as the cluster would resolve it against a directory that is not the submitter's."""
    named = [
        ("source.uri", config.source.uri),
        ("output.uri", config.output.uri),
        ("model.checkpoint", config.model.checkpoint),
    ]
    warnings = []
    for key, uri in named:
        if uri is None or "://" in uri and not uri.startswith("file://"):
            continue
        if storage.is_relative_path(uri) and not working_dir:
            raise ConfigError(
                f"{key} {uri!r} is a relative local path: the cluster would read it from the job's working "
                "directory, not from here. Use a URI every node reaches (s3://...), an absolute path on a "
                "filesystem every node mounts, or ship the folder with --working-dir"
            )
        where = "inside the --working-dir shipped with the job" if storage.is_relative_path(uri) else "on every node"
        warnings.append(f"{key} {uri!r} is a local path: it must exist {where}")
    return warnings


def build_submission(
    config: JobConfig,
    *,
    working_dir: str | None = None,
    pip: Sequence[str] = (),
    env: Sequence[str] = (),
    force: bool = False,
) -> Submission:
    """The entrypoint and runtime env for `config`; command-line options extend the config's env."""
    runtime_env = json.loads(json.dumps(config.ray.runtime_env))
    if working_dir:
        runtime_env["working_dir"] = working_dir
    if pip:
        runtime_env["pip"] = [*runtime_env.get("pip", []), *pip]
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r} is not of the form NAME=VALUE")
        runtime_env.setdefault("env_vars", {})[key] = value
    job = config.model_copy(deep=True)
    job.ray.address = "auto"
    job.ray.runtime_env = {}
    if job.storage:  # credentials may be in it: through the job's environment, never its command line
        runtime_env.setdefault("env_vars", {})[STORAGE_ENV] = json.dumps(job.storage)
        job.storage = {}
    text = json.dumps(job.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
    entrypoint = f"masklet run --config-json {shlex.quote(text)}" + (" --force" if force else "")
    return Submission(entrypoint, runtime_env, tuple(_local_paths(config, working_dir)))


def resolve_address(address: str | None) -> str:
    resolved = address or os.environ.get(ADDRESS_ENV)
    if not resolved:
        raise ConfigError(f"no Ray cluster given: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    return resolved


def client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as exc:
        raise ConnectionError(f"cannot reach the Ray job server at {url}: {exc}") from exc


def submit(address: str | None, submission: Submission) -> str:
    jobs = client(address)
    with _refused():
        return jobs.submit_job(entrypoint=submission.entrypoint, runtime_env=submission.runtime_env or None)


def status(address: str | None, job_id: str) -> dict[str, Any]:
    """Status, message, entrypoint and times of a job (RuntimeError if the cluster does not know it)."""
    jobs = client(address)
    with _refused():
        info = jobs.get_job_info(job_id)
    return {
        "job_id": job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": _clock(info.start_time),
        "end_time": _clock(info.end_time),
    }


def logs(address: str | None, job_id: str, out: TextIO, *, follow: bool = False) -> None:
    """Print the job's output so far; with `follow`, keep printing until the job ends."""
    jobs = client(address)
    if not follow:
        with _refused():
            out.write(jobs.get_job_logs(job_id))
        out.flush()
        return

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with _refused():
        asyncio.run(tail())


def stop(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job; False if it had already ended."""
    jobs = client(address)
    with _refused():
        return bool(jobs.stop_job(job_id))


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """The SDK reports a refused request (unknown job, bad runtime env) as RuntimeError."""
    try:
        yield
    except RuntimeError as exc:
        raise JobsApiError(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)) from exc


def _clock(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else None
