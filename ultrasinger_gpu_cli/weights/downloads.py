"""Fetching model weights: atomic, resumable, checksummed, and quick to give up on a dead link.

* The file grows under a temporary name beside the target (``.NAME.download``) and is renamed
  into place only once complete and checksummed: a later run never finds a truncated model.
* An interrupted transfer resumes from where it stopped (an HTTP ``Range`` request; a server
  that ignores it sends the whole file again, and that is fine too).
* A connection that can't be made, or a server that stops answering, fails after
  ``timeout_s`` seconds (10 by default) with a message that says so, not a long hang.
* ``UGPU_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` (or ``--offline``) means: never try.

Standard library only (urllib); ``file://`` URLs work the same way, which the tests use.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ultrasinger_gpu_cli.errors import ModelMissingError

#: ``progress(done_bytes, total_bytes or None)``
DownloadProgress = Callable[[int, "int | None"], None]
CHUNK = 1 << 20
TIMEOUT_S = 10.0


def offline() -> bool:
    """The user asked ugpu never to download (``UGPU_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in ("UGPU_OFFLINE", "HF_HUB_OFFLINE"))


class DownloadError(ModelMissingError):
    """A download that could not be made or finished."""


@dataclass(frozen=True)
class Download:
    url: str
    target: Path
    sha256: str | None = None  # the whole digest, or a prefix of it (demucs names carry 8 hex digits)
    what: str = "model"  # for messages: "whisper large-v3-turbo"

    @property
    def partial(self) -> Path:
        return self.target.with_name(f".{self.target.name}.download")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _host(url: str) -> str:
    return urllib.request.urlparse(url).netloc or url


def _is_local(exc: BaseException, item: Download) -> bool:
    """The error is this machine's disk (the models folder), not the network."""
    import errno

    if isinstance(exc, urllib.error.URLError) or isinstance(exc, (socket.timeout, TimeoutError, ConnectionError)):
        return False
    local = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    return getattr(exc, "errno", None) in local or str(getattr(exc, "filename", "")) in (str(item.partial), str(item.target))


def _local(item: Download, exc: OSError) -> DownloadError:
    from ultrasinger_gpu_cli.errors import from_os_error

    known = from_os_error(exc)
    if known is not None:
        return DownloadError(f"downloading {item.what}: {known.message}", hint=known.hint)
    folder = item.target.parent
    return DownloadError(f"cannot save {item.what} in the models folder {folder}: {exc.strerror or exc}",
                         hint="make the folder writable, or point --models-dir / UGPU_MODELS at one you can write")  # fmt: skip


def fetch(item: Download, progress: DownloadProgress | None = None, *, timeout_s: float = TIMEOUT_S) -> Path:
    """Download ``item.url`` to ``item.target`` (resuming a partial one), verify, rename into place.
    Offline (``UGPU_OFFLINE``, ``HF_HUB_OFFLINE``) nothing goes to the network: only a ``file:``
    mirror is read."""
    if offline() and not item.url.startswith("file:"):
        raise DownloadError(f"{item.what} would be downloaded from {_host(item.url)}, but ugpu is offline "
                            "(UGPU_OFFLINE=1 or HF_HUB_OFFLINE=1)",
                            hint="unset UGPU_OFFLINE / HF_HUB_OFFLINE to download, or copy the weights into "
                                 "--models-dir / UGPU_MODELS from a machine that has them")  # fmt: skip
    try:
        item.target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(item.target.parent, os.W_OK):
            raise PermissionError(13, "Permission denied", str(item.target.parent))
    except OSError as exc:
        raise _local(item, exc) from exc
    have = item.partial.stat().st_size if item.partial.exists() else 0
    request = urllib.request.Request(item.url, headers={"User-Agent": "ugpu"})
    if have and item.url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = getattr(response, "status", None)
            resumed = have > 0 and (status == 206 or item.url.startswith("file:"))
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = (have + int(length)) if length and length.isdigit() else None
            if item.url.startswith("file:") and resumed:
                response.read(have)  # a local file has no ranges: skip what is already here
                total = int(length) if length and length.isdigit() else None
            with open(item.partial, "ab" if resumed else "wb") as out:
                done = have
                if progress:
                    progress(done, total)
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        if _is_local(exc, item):
            raise _local(item, exc) from exc
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"downloading {item.what} from {_host(item.url)} failed: {reason}",
            hint="check the internet connection and run again (the download resumes); "
            "offline, fetch the models elsewhere with `ugpu models pull --models-dir DIR`",
        ) from exc
    if total is not None and done < total:
        raise DownloadError(f"downloading {item.what} stopped at {done} of {total} bytes",
                            hint="run again: the download resumes where it stopped")  # fmt: skip
    if item.sha256:
        digest = _sha256(item.partial)
        if not digest.startswith(item.sha256.lower()):
            item.partial.unlink(missing_ok=True)
            raise DownloadError(
                f"downloading {item.what}: the SHA256 checksum does not match (got {digest[:12]}..., "
                f"expected {item.sha256[:12]}...); the file was removed",
                hint="run again; if it happens again, the server sends a different file",
            )
    os.replace(item.partial, item.target)
    return item.target
