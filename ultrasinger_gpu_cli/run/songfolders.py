"""Claiming a song's output folder, atomically, across processes.

Two conversions that pick the same ``Artist - Title`` folder at the same time (two ``ugpu run``,
``--gpus`` workers, Ray actors, server workers) must not both write into it. A folder is claimed
by its marker file (``.ugpu-song.json``, the source's content hash): the marker is written whole
to a temporary file, locked, and linked into place with ``link(2)``, which fails when a marker is
already there, so exactly one process makes it. The claimer holds an exclusive ``flock`` on the
marker for as long as it converts: another process converting the same song sees the lock and
stays away; one converting a different song sees a different hash and takes the next name.

Where ``flock`` does not exist (Windows) the claim is still atomic; only "the same song, at the
same moment, in two processes" is not detected there.

Also the folder's policy around a run: a song already done there, or being done by another
process, is said so (:class:`SongAlreadyDone`, :class:`SongBusy`); a deliberate re-run removes
only the files the last run listed; a claim for a song that then failed is given back.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ultrasinger_gpu_cli.errors import UgpuError
from ultrasinger_gpu_cli.song.textfiles import read_json_or_none

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: In every song folder ugpu writes: whose song it holds (the source's content hash).
MARKER = ".ugpu-song.json"


@dataclass
class Claim:
    """A song folder this process holds until :meth:`release`."""

    folder: Path
    fresh: bool  # True: made now; False: this song's own folder from before (resumed or redone)
    _fd: int | None = None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


#: What :func:`claim` found when it could not claim: another song's folder (or not ugpu's), or
#: this song being converted by another process right now.
OTHER, BUSY = "other", "busy"


def marker_hash(folder: Path) -> str | None:
    data = read_json_or_none(folder / MARKER, cap_bytes=64 * 1024)
    return str(data["content_sha256"]) if isinstance(data, dict) and "content_sha256" in data else None


def _lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_marker(marker: Path) -> int | None:
    """The existing marker, opened without following a link or blocking; None when it is not a
    regular file (a FIFO, a device, a link: never ugpu's)."""
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def claim(folder: Path, content: str, source_name: str) -> Claim | str:
    """Claim ``folder`` for the song whose content hash is ``content``: a :class:`Claim`, or
    :data:`OTHER` (someone else's folder: take another name) or :data:`BUSY` (this song is being
    converted by another process now)."""
    try:
        folder.mkdir()
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir():
            return OTHER
    marker = folder / MARKER
    for _ in range(3):  # a marker made and removed by another process in between: look again
        if os.path.lexists(marker):
            fd = _open_marker(marker)
            if fd is None:
                return OTHER
            if marker_hash(folder) != content:
                os.close(fd)
                return OTHER
            if not _lock(fd):
                os.close(fd)
                return BUSY
            return Claim(folder, fresh=False, _fd=fd)
        if any(p.name != MARKER and not p.name.startswith(f".{MARKER}.") for p in folder.iterdir()):
            return OTHER  # files that are not ugpu's: never touched
        temporary = folder / f".{MARKER}.{os.getpid()}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps({"content_sha256": content, "source": source_name}).encode())
            _lock(fd)
            try:
                os.link(temporary, marker)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links (FAT, some network shares): O_EXCL
                os.close(fd)
                fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                _lock(fd)
                os.write(fd, json.dumps({"content_sha256": content, "source": source_name}).encode())
        except FileExistsError:
            os.close(fd)
            continue  # another process made it first: read its marker
        except BaseException:
            os.close(fd)
            raise
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        return Claim(folder, fresh=True, _fd=fd)
    return OTHER


class SongAlreadyDone(UgpuError):
    """This song (the same content) is already converted in its folder; ``--overwrite`` redoes it."""


class SongBusy(UgpuError):
    """This song (the same content) is being converted into its folder by another process now."""


def listed_files(report: Path) -> dict[str, Path]:
    """The files a song's report lists, by kind (``audio``, ``ultrastar``, ``preview``...); none
    where the report is missing or is not ugpu's."""
    data = read_json_or_none(report)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): Path(v) for k, v in files.items() if isinstance(v, str)}


def remove_listed(folder: Path, report: Path) -> None:
    """Before a deliberate re-run: remove the files the last run wrote (and only those)."""
    for target in [*listed_files(report).values(), report]:
        if target.parent.resolve() == folder:
            target.unlink(missing_ok=True)


def remove_claimed(folder: Path) -> None:
    """A song folder claimed for a song that then failed: removed when it holds nothing but the
    claim (the song's files are written last, so a failure leaves only the marker)."""
    try:
        if all(p.name == MARKER for p in folder.iterdir()):
            (folder / MARKER).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass
