"""`job.json` in the output root: what produced the outputs there, so a resume can refuse a mix.

The job hash is `JobConfig.content_hash()`: every setting that decides the outputs, placement
left out. The same hash is written in every row (`config_hash`) and in every `_done` marker.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from masklet import __version__
from masklet.config import PLACEMENT, JobConfig, redacted
from masklet.io import layout
from masklet.io.layout import JOB_FILE


class JobConflict(ValueError):
    """The output root holds the outputs of a different job."""


@dataclass(frozen=True)
class JobRecord:
    """What job.json says; `history` lists earlier jobs whose done shards were kept by --force."""

    config_hash: str
    model: str
    init: str  # "checkpoint", or "random": untrained weights, asked for by name
    checkpoint: str | None
    checkpoint_sha256: str | None
    config: dict[str, Any]
    masklet_version: str = __version__
    created_at: str = ""
    history: tuple[dict[str, Any], ...] = ()

    @classmethod
    def for_config(cls, config: JobConfig, checkpoint_sha256: str | None) -> JobRecord:
        return cls(
            config_hash=config.content_hash(),
            model=config.model.name,
            init=config.model.init,
            checkpoint=config.model.weights,
            checkpoint_sha256=checkpoint_sha256,
            config=redacted(config.model_dump(mode="json")),  # job.json may sit in a shared bucket
            created_at=_now(),
        )

    def identity(self) -> tuple[str, str | None]:
        return self.config_hash, self.checkpoint_sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "model": self.model,
            "init": self.init,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "masklet_version": self.masklet_version,
            "created_at": self.created_at,
            "history": list(self.history),
            "config": self.config,
        }


def read_job(output_uri: str) -> dict[str, Any] | None:
    try:
        return layout.read_json(output_uri, JOB_FILE)
    except ValueError as exc:
        raise JobConflict(f"{exc}; move it away if this root is yours") from exc


def claim_output(output_uri: str, record: JobRecord, *, force: bool, committed: bool) -> str:
    """Write job.json unless it already describes this job; return "new", "resume", "replaced" or "forced".

    A root holding another job (different hash or checkpoint) is refused unless `force`: then the
    new job is recorded, the old one goes into `history`, and its done shards stay as they are. A
    job that committed no shard there (`committed` false: it failed before its first) locks nothing:
    its job.json is replaced, so the corrected rerun of a job refused on a worker just runs.
    """
    existing = read_job(output_uri)
    if existing is not None:
        old = (existing.get("config_hash"), existing.get("checkpoint_sha256"))
        if old == record.identity():
            return "resume"
        if not committed:
            layout.write_json(output_uri, JOB_FILE, record.to_json())
            return "replaced"
        if not force:
            raise JobConflict(_conflict_message(output_uri, existing, record))
        past = {k: existing.get(k) for k in ("config_hash", "model", "checkpoint_sha256", "created_at")}
        record = JobRecord(**{**record.__dict__, "history": (*existing.get("history", ()), past)})
    layout.write_json(output_uri, JOB_FILE, record.to_json())
    return "new" if existing is None else "forced"


def _conflict_message(output_uri: str, existing: dict[str, Any], record: JobRecord) -> str:
    changed = _changed_keys(existing.get("config") or {}, record.config)
    what = f"settings changed: {', '.join(changed[:8])}" if changed else "the checkpoint changed"
    if not changed and existing.get("checkpoint_sha256") == record.checkpoint_sha256:
        what = "its job hash differs"
    return (
        f"{output_uri} holds the outputs of another job ({what}; job.json hash "
        f"{str(existing.get('config_hash'))[:12]}, this job {record.config_hash[:12]}). Use another output.uri, "
        f"delete {output_uri} to start over, or --force to keep the shards already done and run the rest with "
        "this config"
    )


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    name = prefix.rstrip(".")
    if old == new or any(name == p or name.startswith(p + ".") for p in PLACEMENT):
        return []
    return [name]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
