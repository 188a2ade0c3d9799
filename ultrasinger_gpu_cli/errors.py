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
