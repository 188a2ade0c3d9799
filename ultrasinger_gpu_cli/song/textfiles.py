"""One reader for every file ugpu reads by name (lyrics, charts, markers, reports, cache entries).

Regular files only, size-capped, never blocking: a FIFO, a socket, a device (``/dev/zero``
through a link) or a directory is refused by what it is, before a byte is read; a file over its
cap is refused by its size, and at most ``cap + 1`` bytes are ever read (a sparse 3 GB file, or
a ``/proc`` file whose size says 0, cannot grow memory). The open itself never blocks
(``O_NONBLOCK``: a FIFO without a writer would otherwise hang the process).

Text decoding is one policy with two options: a byte order mark decides (UTF-8, UTF-16), a NUL
byte means binary, then UTF-8, else cp1252 where the caller allows it (as the karaoke games do).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ultrasinger_gpu_cli.errors import UgpuError

#: What ugpu reads by name is kilobytes; this is the cap where a caller gives none.
DEFAULT_CAP_BYTES = 20 * 2**20


def kind_of(mode: int) -> str:
    """What a file is, in words, for a message."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes(path: str | os.PathLike[str], *, cap_bytes: int = DEFAULT_CAP_BYTES, what: str = "file",
               error: type[UgpuError] = UgpuError, hint: str | None = None) -> bytes:  # fmt: skip
    """The bytes of a regular file of at most ``cap_bytes``, or ``error`` naming the file and why."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}", hint=hint) from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}", hint=hint) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {kind_of(info.st_mode)}, not a {what}", hint=hint)
        if info.st_size > cap_bytes:
            raise error(f"{path}: {info.st_size / 2**20:.1f} MB is too large for a {what} "
                        f"(at most {cap_bytes / 2**20:.0f} MB)", hint=hint)  # fmt: skip
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(2**20, cap_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap_bytes:  # grew while read, or a file that reports no size
                raise error(f"{path}: larger than {cap_bytes / 2**20:.0f} MB, too large for a {what}", hint=hint)
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}", hint=hint) from None
    finally:
        os.close(fd)


def decode(data: bytes, path: str | os.PathLike[str], *, what: str = "file", error: type[UgpuError] = UgpuError,
           cp1252: bool = False, hint: str | None = None) -> tuple[str, str | None]:  # fmt: skip
    """Text and a warning (when it had to be read as cp1252). ``cp1252``: a file that is not UTF-8
    is read as Windows-1252 (as the games read charts) instead of refused."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as exc:
            raise error(f"{path}: starts with a UTF-16 byte order mark but is not UTF-16 ({exc.reason})",
                        hint=hint or "save it as UTF-8") from None  # fmt: skip
    if b"\x00" in data:
        raise error(f"{path}: a binary file, not a {what}", hint=hint)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        if not cp1252:
            raise error(f"{path}: not UTF-8 (byte {exc.start} is {data[exc.start]:#04x})",
                        hint="save it as UTF-8 (in most editors: Save as, Encoding: UTF-8)") from None  # fmt: skip
    return data.decode("cp1252", "replace"), f"{path} is not UTF-8: read as cp1252 (Windows-1252), as the games do"


def read_text(path: str | os.PathLike[str], *, cap_bytes: int = DEFAULT_CAP_BYTES, what: str = "file",
              error: type[UgpuError] = UgpuError, cp1252: bool = False, hint: str | None = None) -> tuple[str, str | None]:  # fmt: skip
    """:func:`read_bytes` then :func:`decode`."""
    data = read_bytes(path, cap_bytes=cap_bytes, what=what, error=error, hint=hint)
    return decode(data, path, what=what, error=error, cp1252=cp1252, hint=hint)


def read_json_or_none(path: str | os.PathLike[str], *, cap_bytes: int = 4 * 2**20) -> object | None:
    """A small JSON file ugpu wrote itself (a marker, a report, a cache entry); None when it is not
    there, not a regular file, too large or not JSON: never a hang, never a crash."""
    import json

    try:
        data = read_bytes(path, cap_bytes=cap_bytes)
        return json.loads(data.decode("utf-8"))
    except (UgpuError, ValueError, RecursionError):
        return None
