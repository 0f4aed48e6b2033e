"""Tar shards, read one way: member names checked, keys made tar-safe, damage reported, never silence.

Every tar masklet reads (input shards, annotation tars, output tars) goes through `read_tar`: the tar
is streamed front to back, never seeking, as object stores serve it; a member with an absolute or
`..` name, or a link or special file, is refused with a reason; a corrupt or cut archive raises
`TarDamaged` naming the tar and where it broke, instead of ending quietly (stream-mode tarfile takes
a bad header for the end of the archive, so every later sample would vanish unseen).

Keys (`{key}.mp4`, `{key}.json`, ...) follow one rule everywhere: `[A-Za-z0-9_-]`, 1 to
`MAX_KEY_LENGTH` characters, so that `{key}.prompts.json` fits the 100-byte name of a plain ustar
header; `sanitize_key` makes any name so, hashing it when it had to change it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

MAX_KEY_LENGTH = 80
MAX_MEMBER_BYTES = 16 * 2**30  # a member claiming more is refused before a byte of it is read
_SAFE_KEY = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_KEY_LENGTH}}}")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes decoding with surrogateescape could not read
# what reading a tar from `_open_tar_stream` raises when the archive (or its compression) is damaged
_TAR_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error)


class TarDamaged(OSError):
    """A tar that is truncated or corrupt: the message names it and the last member read before the break."""


def is_safe_key(key: str) -> bool:
    """Whether a key can name tar members (WebDataset cuts names at the first dot and at slashes)."""
    return _SAFE_KEY.fullmatch(key) is not None


def sanitize_key(original: str) -> str:
    """A tar-safe key: [A-Za-z0-9_-] only, at most MAX_KEY_LENGTH, hashed when it had to change."""
    safe = _UNSAFE_KEY_CHARS.sub("_", original)
    if safe == original and 0 < len(safe) <= MAX_KEY_LENGTH:
        return safe
    digest = hashlib.sha1(original.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe[: MAX_KEY_LENGTH - 9]}-{digest}"


@dataclass
class TarMember:
    """One member of a tar being read: its name, why it is refused (None: a safe regular file), its size,
    its bytes (`read`), or its bytes written to a local file as a stream (`save(path)`)."""

    name: str
    refused: str | None
    size: int
    read: Callable[[], bytes]
    save: Callable[[str], None]


def read_tar(f: BinaryIO, uri: str, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[TarMember]:
    """The members of the tar in `f` (compressed or not), in order, directories left out. Names that are
    not UTF-8 come with their undecodable bytes escaped (`caf%E9.mp4`), so they can be keys, rows and
    messages; members over `max_member_bytes` (or sparse) are refused unread.

    Raises `TarDamaged` at the break of a truncated or corrupt tar, after the members before it.
    """
    last = None
    try:
        with _open_tar_stream(f) as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = printable(member.name)
                last = name
                read, save = _readers(tar, member, uri)
                yield TarMember(name, _refusal(member, name, max_member_bytes), member.size, read, save)
    except _TAR_STREAM_ERRORS as exc:
        raise _damaged(uri, last, exc) from exc


def _damaged(uri: str, last: str | None, exc: BaseException) -> TarDamaged:
    where = f"at or after member {last!r}" if last else "at its start"
    return TarDamaged(f"the tar {uri} is truncated or corrupt {where}: {exc}")


@contextmanager
def _open_tar_stream(f: BinaryIO) -> Iterator[tarfile.TarFile]:
    """A tar read front to back with `_CheckedTarInfo`: damage raises ReadError instead of ending it."""
    with tarfile.open(fileobj=f, mode="r|*", tarinfo=_CheckedTarInfo) as tar:
        yield tar


def printable(name: str) -> str:
    """A tar member name as text any writer takes: each byte that was not UTF-8 (tarfile keeps it as a
    surrogate) becomes `%XX`, as in a URL (a backslash would read as a Windows path)."""
    return _UNDECODED.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", name)


def _refusal(member: tarfile.TarInfo, name: str, max_bytes: int) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in re.split(r"[/\\]", name):
        return f"member name {name!r} is refused: absolute paths and '..' are not allowed in a shard"
    if not member.isfile():
        return f"member {name!r} is refused: it is a link or special file, not a regular file"
    if member.issparse():
        return f"member {name!r} is refused: a sparse member (its size is claimed, not stored)"
    if member.size > max_bytes:
        limit = f"over the limit of {max_bytes} (source.max_member_bytes)"
        return f"member {name!r} is refused: {member.size} bytes, {limit}"
    return None


def _readers(
    tar: tarfile.TarFile, member: tarfile.TarInfo, uri: str
) -> tuple[Callable[[], bytes], Callable[[str], None]]:
    @contextmanager
    def opened() -> Iterator[BinaryIO]:
        f = tar.extractfile(member)
        assert f is not None, "refused members (links, special files) are never read"
        try:
            yield f
        except _TAR_STREAM_ERRORS as exc:
            raise _damaged(uri, member.name, exc) from exc

    def read() -> bytes:
        with opened() as f:
            return f.read()

    def save(path: str) -> None:
        with opened() as f, open(path, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)

    return read, save


class _CheckedTarInfo(tarfile.TarInfo):
    """Raises ReadError where tarfile would end quietly: the archive must end in two zero blocks.
    Byte offsets in its errors count in the tar, after any decompression."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        at = f"at byte {tar.offset} (member {len(tar.members) + 1})"
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                reason = f"a zero block {at} is not followed by a second one: a header was zeroed or the end cut"
                raise tarfile.ReadError(reason) from None
            raise
        except tarfile.HeaderError as exc:
            if tar.offset == 0:  # tarfile reports a bad first header itself ("empty file", ...)
                raise
            reason = _HEADER_PROBLEMS.get(type(exc), "corrupt header {at}: {exc}")
            raise tarfile.ReadError(reason.format(at=at, exc=exc)) from None


_HEADER_PROBLEMS = {
    tarfile.EmptyHeaderError: "the tar ends {at} without its two end-of-archive zero blocks",
    tarfile.TruncatedHeaderError: "the tar ends inside the header {at}",
}
