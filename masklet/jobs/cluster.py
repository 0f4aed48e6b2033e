"""Which Ray a job runs on, and how many workers of what size it gets there.

An embedded Ray (no `ray.address`) is one machine's: every Ray process listens on 127.0.0.1 only.
Ray decides that when it is imported (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes it bind to
loopback and stops it from rewriting 127.0.0.1 into the machine's address), so
`keep_on_loopback()` must run before the first `import ray`; the CLI calls it before importing
the driver. This module imports Ray only inside its functions for that reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from masklet.config import RayConfig, WorkersConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
COLOR_PREFIX_ENV = "RAY_COLOR_PREFIX"
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _NotTheDefaultTokenNotice(logging.Filter):
    """Ray enables token authentication for every local cluster and says so on every run; an embedded
    Ray keeps the protection, the log loses a line nobody can act on (a warning that it is *off* stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


class ClusterError(ValueError):
    """The Ray cluster cannot run this job as configured."""


def keep_on_loopback() -> None:
    """Make an embedded Ray listen on 127.0.0.1 only; effective when Ray is not imported yet.

    Only for an embedded Ray: a driver that joins a multi-node cluster must advertise its real address.
    """
    os.environ[LOOPBACK_ENV] = "0"


def plain_logs() -> None:
    """Worker log lines without colour codes where they go to a file or a log collector, not a terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault(COLOR_PREFIX_ENV, "0")


@dataclass(frozen=True)
class Cluster:
    """The Ray this driver is connected to; `embedded`: started by us, on this machine only."""

    embedded: bool
    description: str
    resources: dict[str, float]
    dashboard_url: str | None = None


@contextlib.contextmanager
def connect(config: RayConfig) -> Iterator[Cluster]:
    """Start an embedded Ray or join `config.address`; disconnect (and stop an embedded one) after.

    A Ray this process already started (a notebook, a test) is used as it is and left running.
    """
    import ray

    if ray.is_initialized():
        yield describe_cluster(embedded=False, how="the Ray this process is connected to", url=None)
        return
    if config.address is None:
        notice = logging.getLogger(TOKEN_AUTH_LOGGER)
        if not any(isinstance(f, _NotTheDefaultTokenNotice) for f in notice.filters):
            notice.addFilter(_NotTheDefaultTokenNotice())
        context = ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=config.dashboard,
            dashboard_host=LOOPBACK,
            logging_level=logging.WARNING,  # its start-up banner repeats what the plan printed
        )
        if ray.util.get_node_ip_address() != LOOPBACK:
            log.warning(
                "the embedded Ray may listen on the network: Ray was imported without %s=0 "
                "(masklet's CLI sets it; set it before importing Ray when calling masklet from Python)",
                LOOPBACK_ENV,
            )
        how = f"embedded Ray on {LOOPBACK}"
    else:
        context = ray.init(address=config.address)
        how = f"Ray cluster at {config.address}"
    url = context.dashboard_url or None
    try:
        yield describe_cluster(embedded=config.address is None, how=how, url=f"http://{url}" if url else None)
    finally:
        ray.shutdown()


CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before the job is refused


def reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, naming the address, a `ray.address` that does not answer, before the job claims its
    output root: Ray itself waits for minutes. `auto` (the cluster this node is part of) is left to Ray."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"ray.address {address!r} is not 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at ray.address={address!r} in {timeout:g} s: {exc}") from exc


def describe_cluster(*, embedded: bool = False, how: str = "", url: str | None = None) -> Cluster:
    """The Ray this process is connected to, its CPUs and GPUs as they are now."""
    import ray

    resources = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    return Cluster(embedded, how, resources, url)


@dataclass(frozen=True)
class Layout:
    """The worker actors to start: how many, and the Ray resources each one holds."""

    count: int
    num_gpus: float
    num_cpus: float

    def describe(self) -> str:
        gpus = f"{self.num_gpus:g} GPU + " if self.num_gpus else ""
        return f"{self.count} worker(s), each {gpus}{self.num_cpus:g} CPU"


def plan_layout(workers: WorkersConfig, cluster: Cluster, pending: int) -> Layout:
    """One worker per GPU (or per `num_cpus` CPUs without GPUs) unless `workers.count` says; never
    more workers than shards. An embedded Ray that cannot hold one worker is an error; a joined
    cluster may still grow (autoscaling), so there the job waits for it.
    """
    gpus, cpus = cluster.resources.get("GPU", 0.0), cluster.resources.get("CPU", 0.0)
    num_gpus = workers.num_gpus if workers.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if workers.count is not None:
        count = workers.count
    elif num_gpus > 0:
        count = max(1, int(gpus // num_gpus))
    else:
        count = max(1, int(cpus // workers.num_cpus))
    missing = [
        f"{need:g} {name} per worker, the cluster has {have:g}"
        for name, need, have in (("GPU", num_gpus, gpus), ("CPU", workers.num_cpus, cpus))
        if need > have
    ]
    if missing and cluster.embedded:
        raise ClusterError(f"the workers do not fit this machine: {'; '.join(missing)} (see workers.num_gpus/num_cpus)")
    if missing:
        log.warning("the cluster cannot place a worker yet (%s); waiting for it to grow", "; ".join(missing))
    return Layout(min(count, max(pending, 1)), num_gpus, workers.num_cpus)
