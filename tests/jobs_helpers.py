"""Helpers of the job tests: configs, reading a whole output back, and the processes a job started."""

from __future__ import annotations

import os
import socket
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import yaml

from masklet.io import sav
from masklet.jobs.cluster import LOOPBACK_ENV

TESTS = Path(__file__).parent
TIMING_COLUMNS = ("decode_seconds", "model_seconds", "total_seconds")


def start_local_ray(**system_config: Any) -> None:
    """The Ray of a module's in-process runs, on 127.0.0.1; its workers import the test plug-ins from tests/."""
    assert os.environ[LOOPBACK_ENV] == "0", "tests/conftest.py keeps every test Ray on 127.0.0.1"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}},
        _system_config=system_config or None,
    )


def write_config(path: Path, source_uri: str, output: Path, **sections: dict[str, Any]) -> Path:
    """A job on the test corpus with the ground-truth test pipeline; `sections` are merged in."""
    config: dict[str, Any] = {
        "source": {"uri": source_uri, "fps": None},
        "output": {"uri": str(output)},
        "model": {"init": "random"},  # the test pipelines need no trained weights: untrained, asked for by name
        "ray": {"dashboard": False},
        "workers": {"count": 2, "pipeline": "jobs_plugins:ground_truth"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def read_output(root: Path) -> dict[str, Any]:
    """Every shard's rows (timings dropped), tar bytes and marker, by shard id."""
    shards = {}
    for marker in sorted((root / "_done").glob("*.json")):
        shard = marker.stem
        videos = pq.read_table(root / "videos" / f"{shard}.parquet").drop_columns(list(TIMING_COLUMNS))
        shards[shard] = {
            "masklets": pq.read_table(root / "masklets" / f"{shard}.parquet").to_pylist(),
            "videos": videos.to_pylist(),
            "wds": (root / "wds" / f"{shard}.tar").read_bytes(),
            "marker": marker.read_bytes(),
        }
    return shards


def ground_truth(corpus: Path) -> dict[str, sav.SavAnnotation]:
    """The corpus' `{key}.gt.json` of every video, by key."""
    truth = {}
    for path in sorted(corpus.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".gt.json"):
                    truth[member.name.removesuffix(".gt.json")] = sav.parse(tar.extractfile(member).read())
    return truth


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_addresses(pids: set[int]) -> dict[str, int]:
    """`address:port` of every TCP socket listening in `pids` -> the pid, from /proc/net/tcp{,6}."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found[_address(fields[1])] = inodes[fields[9]]
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's `0100007F:1F90` -> `127.0.0.1:8080` (IPv4-mapped IPv6 shown as IPv4)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    if len(words) == 16 and words[:12] == b"\0" * 10 + b"\xff\xff":
        words = words[12:]
    text = socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)
    return f"{text}:{int(port, 16)}"
