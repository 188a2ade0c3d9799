"""One exception hierarchy for the core.

Every error the core raises on purpose derives from :class:`UgpuError`; the CLI turns it
into a one-line message on stderr and the exit code it carries. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_GPU = 3
EXIT_INTERRUPTED = 130


class UgpuError(Exception):
    """Base class of every expected error. ``hint`` is an optional next step for the user."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidSettingError(UgpuError):
    """A setting (mode, model, batch size, device, ...) that does not exist or cannot run."""

    exit_code = EXIT_USAGE


class StoreError(UgpuError):
    """The SQLite store cannot be opened, read or written."""


class NoGpuError(UgpuError):
    """A GPU was required (``--require-gpu``) and none is usable."""

    exit_code = EXIT_NO_GPU


class GpuLostError(UgpuError):
    """NVML reported that a GPU fell off the bus in the middle of a query."""


class AudioError(UgpuError):
    """An input that cannot be decoded (missing, a directory, empty, not audio) or no ffmpeg."""


class OutputError(UgpuError):
    """The output folder or a file in it cannot be written."""


class TimingsError(UgpuError):
    """A ``--timings`` file that cannot be used: its encoding, its shape, or its values."""


class ModelDamagedError(UgpuError):
    """A model file is there but cannot be read: truncated, corrupt, not what its name says."""


class ModelMissingError(UgpuError):
    """Model weights are not on this machine and cannot be fetched now."""


class EngineError(UgpuError):
    """An engine failed in a way the user can act on."""


class GpuUnavailableError(EngineError):
    """The plan says cuda but PyTorch cannot use a GPU now: no batch size fixes it (fallback: the CPU)."""


class SongCancelled(BaseException):
    """Raised from a run's event callback to stop the song that is running (a server job the user
    cancelled): that song ends with nothing written, the others go on. A ``BaseException``, as
    cancellations are: no failure policy takes it for an error."""


def from_os_error(exc: BaseException) -> UgpuError | None:
    """An operating-system error that is the user's to fix, as the core's error naming the path and
    the fix: a full disk (naming the folder that filled), a name too long for the file system, a
    path with a NUL byte. None for anything else."""
    import errno
    import os

    if isinstance(exc, ValueError) and "null" in str(exc).lower() and ("byte" in str(exc) or "character" in str(exc)):
        return InvalidSettingError("a path or value holds a NUL byte (\\0), which no file name can hold",
                                   hint="check the command line and the environment for stray characters")  # fmt: skip
    if not isinstance(exc, OSError):
        return None
    name = exc.filename if isinstance(exc.filename, str) else None
    if exc.errno == errno.ENAMETOOLONG:
        shown = f"{name[:60]}…{name[-20:]}" if name and len(name) > 90 else (name or "a path")
        return InvalidSettingError(f"{shown}: the path is too long for the file system ({len(name or '')} characters)",
                                   hint="give a shorter path")  # fmt: skip
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        folder = os.path.dirname(os.path.abspath(name)) if name else "the output folder"
        what = "full" if exc.errno == errno.ENOSPC else "over its quota"
        return OutputError(f"the disk holding {folder} is {what}: ugpu could not write there",
                           hint="free space on it, or write somewhere else (-o, --db, UGPU_MODELS)")  # fmt: skip
    return None
