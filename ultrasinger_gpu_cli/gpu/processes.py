"""Is the process that started a run still that process? PIDs get reused, so a PID alone can't
say: a run records its process's start time too, and both must match."""

from __future__ import annotations

import os


def start_time(pid: int | None = None) -> float | None:
    """When process ``pid`` (default: this one) started, as a Unix time; None if it is gone."""
    import psutil

    try:
        return float(psutil.Process(pid if pid is not None else os.getpid()).create_time())
    except (psutil.Error, ValueError, OSError):
        return None


def alive(pid: int | None, started: float | None) -> bool:
    """True when ``pid`` runs and (where known) started at ``started`` (within a second)."""
    if pid is None:
        return True  # nothing to check against: assume it runs
    now = start_time(int(pid))
    if now is None:
        return False
    return started is None or abs(now - float(started)) < 1.0
