"""Where ugpu writes: the output folder checked before any work, and names that fit the disk.

* :func:`check_output_dir` refuses, before a model loads, an output folder ugpu could not write:
  an existing file, a path under a file, an unwritable place, a pseudo file system. It probes
  by creating (and removing) a file, so read-only mounts and ``/proc`` are caught too, and it
  creates nothing the user would see.
* :func:`fit_name` cuts a name to the file system's limit in bytes (UTF-8), on a character
  boundary, keeping it unique with a short hash of the whole name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from ultrasinger_gpu_cli.errors import OutputError

#: Bytes in one file name on the file systems ugpu meets (ext4, APFS, NTFS in UTF-16 units...).
NAME_MAX_BYTES = 255
#: What ugpu may add to a song's name: " [Instrumental].flac", ".report.json", and the
#: temporary ".<name>.partial-<pid>-<thread>" while a file is written.
SUFFIX_RESERVE_BYTES = 48
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")  # pragma: no cover - the root always exists


def check_output_dir(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """The folder ``path`` can hold ugpu's outputs, or :class:`OutputError` naming it and the fix."""
    path = Path(path).expanduser()
    hint = "give -o a folder you can write to"
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is an existing file, not a folder", hint=f"{hint}, or move the file away")
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        raise OutputError(f"{path}: the {what} cannot be made, because {existing} is a file", hint=hint)
    try:
        fd, probe = tempfile.mkstemp(prefix=".ugpu-write-check-", dir=existing)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{path}: ugpu cannot write in {existing} ({reason})", hint=hint) from exc
    os.close(fd)
    os.unlink(probe)
    return path


def clean_text(text: str) -> str:
    """One line of text: control and formatting characters (newlines, tabs, NUL, U+2028...) become
    spaces, runs of white space one space."""
    out = "".join(" " if unicodedata.category(ch).startswith("C") or ch in "\u2028\u2029\x85" else ch for ch in text)
    return re.sub(r"\s+", " ", out).strip()


def fit_name(text: str, *, limit_bytes: int = NAME_MAX_BYTES - SUFFIX_RESERVE_BYTES, fallback: str = "song") -> str:
    """A file or folder name safe on every OS and short enough for the file system.

    No separators, reserved characters, control characters or dots at the ends; a reserved
    Windows device name gets a leading ``_``; cut to ``limit_bytes`` of UTF-8 on a character
    boundary, with ``~`` and 8 hex digits of the whole name's hash so that cut names stay unique.
    """
    cleaned = re.sub(r'[<>:"/\\|?*]', "_", clean_text(text)).strip(" .")
    if cleaned.upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    cleaned = cleaned or fallback
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return cleaned
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    head = encoded[: limit_bytes - 9].decode("utf-8", "ignore").rstrip(" .")
    return f"{head}~{digest}"


_PARTIAL = re.compile(r"^\..+\.partial-(\d+)(?:-\d+)?$")


def sweep_partials(root: str | os.PathLike[str], *, depth: int = 2) -> list[Path]:
    """Remove the temporary files ugpu's atomic writes left behind when a process died
    (``.NAME.partial-PID-THREAD`` whose PID no longer runs), in ``root`` and ``depth`` levels below."""
    import psutil

    removed: list[Path] = []
    folders = [Path(root)]
    for level in range(depth + 1):
        next_level = []
        for folder in folders:
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                match = _PARTIAL.match(entry.name)
                if match and entry.is_file() and not psutil.pid_exists(int(match.group(1))):
                    try:
                        entry.unlink()
                        removed.append(entry)
                    except OSError:
                        pass
                elif entry.is_dir() and not entry.is_symlink() and level < depth:
                    next_level.append(entry)
        folders = next_level
    return removed


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """``a`` and ``b`` are one file (the same path, a link, a hard link, another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).absolute().resolve() == Path(b).absolute().resolve()


def refuse_overwriting_inputs(outputs: list[Path], inputs: list[Path], *, hint: str) -> None:
    """No command writes over one of its own inputs: :class:`OutputError` naming both, before any work."""
    for output in outputs:
        for given in inputs:
            if same_file(output, given):
                raise OutputError(f"{output}: ugpu would write this output over its input {given}", hint=hint)
