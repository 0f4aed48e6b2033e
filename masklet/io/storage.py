"""Atomic writes to any fsspec URI: a reader sees a whole file or no file.

Local targets are staged beside the destination and moved into place with `os.replace`;
remote targets (s3://, gs://, ...) are staged in a local temp file and uploaded in one call,
and object stores only make an object visible once its upload completes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


def url_to_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the path inside it for a URI or plain path."""
    return fsspec.core.url_to_fs(uri)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/', whatever the protocol."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def ensure_writable_dir(uri: str) -> None:
    """Create a local output directory and check it is writable, so a job fails before any work.

    Remote stores have no directories to create; their permissions show at the first upload.
    """
    fs, path = url_to_fs(uri)
    if not is_local(fs):
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create output directory {uri!r}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"output directory {uri!r} is not writable")


@contextlib.contextmanager
def staged_file(uri: str) -> Iterator[str]:
    """Yield a local path to write; on clean exit publish it at `uri` atomically, else discard it."""
    fs, path = url_to_fs(uri)
    if is_local(fs):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        stage = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
    else:
        fd, stage = tempfile.mkstemp(prefix="masklet-", suffix=".partial")
        os.close(fd)
    try:
        yield stage
        if is_local(fs):
            os.replace(stage, path)
        else:
            fs.put_file(stage, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(stage)


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` atomically."""
    with staged_file(uri) as stage, open(stage, "wb") as f:
        f.write(data)
