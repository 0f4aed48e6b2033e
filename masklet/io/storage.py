"""Atomic, retried writes to any fsspec URI: a reader sees a whole file or no file.

Local targets are staged beside the destination and moved into place with `os.replace`;
remote targets (s3://, gs://, ...) are staged in a local temp file and uploaded in one call
(s3fs switches to a multipart upload for big files), and object stores only make an object
visible once its upload completes.

Every remote call goes through `call`: transient errors (connection drops, timeouts, 5xx,
SlowDown/throttling) are retried with exponential backoff and jitter, on top of the retries
botocore and s3fs already make per request; permanent ones (no such bucket, access denied, other
4xx) fail at once as a `StorageError` naming the URI. Endpoints and credentials come from the
environment as users set them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), or per protocol from the
job config's `storage` section through `configure` (fsspec's own defaults mechanism, so every
filesystem any library opens in the process gets them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import glob
import hashlib
import logging
import os
import posixpath
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 error codes (and their HTTP statuses) that mean "try again later".
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
    }
)
_TRANSIENT_STATUSES = frozenset({408, 429})
# s3fs turns SlowDown/503 into OSError(EBUSY) and 500 into OSError(EREMOTEIO).
_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO), errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN}
)
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


class StorageError(OSError):
    """A storage operation that failed for good; the message names the URI and what to check."""

    def __init__(self, message: str, uri: str, transient: bool) -> None:
        super().__init__(message)
        self.uri = uri
        self.transient = transient

    def __reduce__(self) -> tuple:  # crosses the Ray boundary whole (OSError's pickling drops the fields)
        return (type(self), (str(self), self.uri, self.transient))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient storage errors are retried.

    Attempt k (k >= 1) that fails transiently waits min(max_delay, base_delay * 2**(k-1)) scaled
    by a random factor in [0.5, 1], so many workers hitting one throttled bucket spread out. No
    attempt starts `deadline` seconds after the first: slow failures (timeouts) end in minutes.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    deadline: float = 180.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


DEFAULT_RETRY = RetryPolicy()


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Connection/timeout exception types of the clients fsspec uses, where installed."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions as bexc

        types += [bexc.ConnectionError, bexc.HTTPClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    return tuple(types)


def _classify_one(exc: BaseException) -> bool | None:
    """True: transient, False: permanent, None: this exception alone does not say."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):  # botocore ClientError
        code = str(response["Error"].get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        status = int(status) if status is not None else int(code) if code.isdigit() else None
        return code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status in _TRANSIENT_STATUSES))
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, _transient_types()):
        return True
    for attr in ("status", "status_code", "code"):  # aiohttp, requests, gcsfs HttpError
        status = getattr(exc, attr, None)
        if isinstance(status, int) and 400 <= status < 600:
            return status >= 500 or status in _TRANSIENT_STATUSES
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in _TRANSIENT_ERRNOS
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: the outermost exception in the cause chain that says decides."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def _hint(exc: BaseException) -> str:
    text = str(exc)
    if "bucket" in text.lower() and isinstance(exc, FileNotFoundError):
        return " (does the bucket exist, and is the endpoint right?)"
    if isinstance(exc, PermissionError):
        return " (check credentials: AWS_* environment or the config's storage section)"
    return ""


def call(op: str, uri: str, fn: Callable[..., T], *args: Any, retry: RetryPolicy | None = None, **kwargs: Any) -> T:
    """Run a storage call, retrying transient errors; fail with a StorageError naming `uri`."""
    policy = retry or DEFAULT_RETRY
    attempt, start = 0, time.monotonic()
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            transient = is_transient(exc)
            reason = f"{type(exc).__name__}: {exc}"
            if not transient:
                raise StorageError(f"{op} {uri} failed: {reason}{_hint(exc)}", uri, False) from exc
            wait = policy.delay(attempt)
            if attempt == policy.attempts or time.monotonic() - start + wait > policy.deadline:
                raise StorageError(
                    f"{op} {uri} failed after {attempt} attempts, last error transient: {reason}", uri, True
                ) from exc
            log.warning(
                "%s %s: transient error (%s), retry %d/%d in %.1fs", op, uri, reason, attempt, policy.attempts - 1, wait
            )
            time.sleep(wait)


def configure(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Default filesystem arguments per protocol (e.g. `{"s3": {"endpoint_url": ...}}`) for this process.

    Goes through `fsspec.config.conf`, so the arguments reach every filesystem opened afterwards,
    by masklet or by any library; explicit arguments still win. Call it in every process of a job.
    """
    for protocol, kwargs in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(kwargs)


def _time_limits() -> dict[str, dict[str, Any]]:
    """Connect and read timeouts for every remote call, so an endpoint that accepts connections and
    never answers fails the call (then `call` retries it) instead of hanging the job. Each library's
    botocore's own retries are cut to one, as s3fs and `call` retry: a black-hole endpoint fails a call
    within minutes (`RetryPolicy.deadline`), not hours."""
    # botocore rewrites a `retries` dict into this form in place; given in it, the settings stay as they
    # are, and so does s3fs's instance cache, whose key they are part of
    retries = {"total_max_attempts": 2, "mode": "legacy"}
    limits: dict[str, dict[str, Any]] = {
        "s3": {"config_kwargs": {"connect_timeout": 10, "read_timeout": 20, "retries": retries}}
    }
    with contextlib.suppress(ImportError):
        import aiohttp

        limits["http"] = limits["https"] = {
            "client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)}
        }
    return limits


# applied once, where nothing was set: the storage section of a config, or a user's own fsspec settings, win
for _protocol, _defaults in _time_limits().items():
    for _key, _value in _defaults.items():
        fsspec.config.conf.setdefault(_protocol, {}).setdefault(_key, _value)


def url_to_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for a URI or plain path."""
    return fsspec.core.url_to_fs(uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/', whatever the protocol."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def normalized(uri: str) -> str:
    """One spelling per location, for comparing URIs: `./corpus`, `corpus/` and `file:///cwd/corpus`
    are the same folder. Local paths become absolute; no storage is touched."""
    protocol, path = fsspec.core.split_protocol(uri)
    if protocol in (None, "file", "local"):
        return "file://" + os.path.abspath(os.path.expanduser(path))
    return f"{protocol}://{posixpath.normpath(path).lstrip('/')}"


def is_inside(uri: str, folder: str) -> bool:
    """Whether `uri` is `folder` or lies under it, both normalised."""
    uri, folder = normalized(uri), normalized(folder).rstrip("/")
    return uri == folder or uri.startswith(folder + "/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_relative_path(uri: str) -> bool:
    """A local path that depends on the working directory (not on the config file that names it)."""
    return "://" not in uri and not os.path.isabs(uri)


def where_relative(uri: str) -> str:
    """For an error about `uri`: where a relative path was looked for, as a clause; '' otherwise."""
    if not is_relative_path(uri):
        return ""
    return f" (a relative path: read from the working directory {os.getcwd()}, not from the config file's folder)"


def ensure_writable_dir(uri: str, *, retry: RetryPolicy | None = None) -> None:
    """Check that a job can write under `uri` before it does any work.

    Local: create the directory and check its permissions. Remote: stores have no directories,
    so write and delete a small probe object, which surfaces a missing bucket, a wrong endpoint
    or denied access as a StorageError naming the URI.
    """
    fs, path = url_to_fs(uri)
    if not is_local(fs):
        probe = join(path, f".masklet-probe-{uuid.uuid4().hex}")
        call("write to", uri, fs.pipe_file, probe, b"", retry=retry)
        call("delete from", uri, fs.rm_file, probe, retry=retry)
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create output directory {uri!r}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"output directory {uri!r} is not writable")


def put_file(
    local_path: str,
    uri: str,
    *,
    retry: RetryPolicy | None = None,
    **put_kwargs: Any,
) -> None:
    """Upload a local file to `uri` in one (possibly multipart) call, retried as a whole.

    `put_kwargs` go to the filesystem's put_file, e.g. s3fs's `chunksize` (multipart part size;
    files of at least twice that go multipart, default 50 MiB parts).
    """
    fs, path = url_to_fs(uri)
    call("upload to", uri, fs.put_file, local_path, path, retry=retry, **put_kwargs)


class StagedFile:
    """A local file to write that becomes visible at `uri` only on `publish()`, all at once.

    Local targets are staged as a hidden `.{name}.{uuid}.partial` beside the destination (same
    filesystem, so the move is atomic; readers such as pyarrow.dataset skip hidden files);
    remote ones in the temp directory, named after their target (`remove_stale_stages`).
    """

    def __init__(self, uri: str, *, retry: RetryPolicy | None = None) -> None:
        self.uri = uri
        self._fs, self._path = url_to_fs(uri)
        self._retry = retry
        folder, prefix = _stage_prefix(uri)
        self.path = os.path.join(folder, f"{prefix}{uuid.uuid4().hex}{STAGE_SUFFIX}")
        mode = 0o666 if is_local(self._fs) else 0o600  # a remote target's stage sits in a shared /tmp
        try:
            os.makedirs(folder, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        except OSError as exc:
            raise_disk_full(exc, uri, self.path)
            raise

    def publish(self, **put_kwargs: Any) -> None:
        """Move (local) or upload (remote) the staged file to `uri`, then drop the stage."""
        try:
            if is_local(self._fs):
                os.replace(self.path, self._path)
            else:
                call("upload to", self.uri, self._fs.put_file, self.path, self._path, retry=self._retry, **put_kwargs)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


STAGE_SUFFIX = ".partial"


def _stage_prefix(uri: str) -> tuple[str, str]:
    """The folder of the stages of `uri` and the start of their names (then a uuid, then STAGE_SUFFIX)."""
    fs, path = url_to_fs(uri)
    if is_local(fs):
        return os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}."
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]  # another root's stage of the same name is not ours
    return tempfile.gettempdir(), f"masklet-{digest}-{os.path.basename(path)}."


def remove_stale_stages(uri: str) -> int:
    """Delete the stages of `uri` a killed writer left (SIGKILL, a lost node); return how many.

    A writer calls this before it stages `uri` again: one writer per target at a time, so any stage
    left is stale."""
    folder, prefix = _stage_prefix(uri)
    stale = glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(prefix)}*{STAGE_SUFFIX}"), include_hidden=True)
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return len(stale)


@contextlib.contextmanager
def staged_file(uri: str, *, retry: RetryPolicy | None = None) -> Iterator[str]:
    """Yield a local path to write; on clean exit publish it at `uri` atomically, else discard it."""
    staged = StagedFile(uri, retry=retry)
    try:
        yield staged.path
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise_disk_full(exc, uri, staged.path)
        raise
    staged.publish()


def raise_disk_full(exc: OSError, uri: str, stage: str) -> None:
    """Raise, from `exc`, an error naming the folder and the target when `exc` says the disk is full
    (pyarrow's and tarfile's say so without naming any file); return otherwise."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = os.path.dirname(stage)
        message = f"no space left in {folder} (disk full or over quota) while writing {uri}"
        raise OSError(exc.errno, message, stage) from exc


def read_bytes(uri: str, *, retry: RetryPolicy | None = None) -> bytes:
    """The whole file at `uri` (retried; a StorageError naming it)."""
    fs, path = url_to_fs(uri)
    return call("read", uri, fs.cat_file, path, retry=retry)


def get_file(uri: str, local: str, *, retry: RetryPolicy | None = None) -> None:
    """Copy the file at `uri` to the local path `local` as a stream (retried; a StorageError naming it)."""
    fs, path = url_to_fs(uri)
    call("read", uri, fs.get_file, path, local, retry=retry)


def read_bytes_if_present(uri: str, *, retry: RetryPolicy | None = None) -> bytes | None:
    """`read_bytes(uri)`, or None where there is no such file."""
    try:
        return read_bytes(uri, retry=retry)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def write_bytes(uri: str, data: bytes, *, retry: RetryPolicy | None = None) -> None:
    """Write `data` to `uri` atomically."""
    with staged_file(uri, retry=retry) as stage, open(stage, "wb") as f:
        f.write(data)
