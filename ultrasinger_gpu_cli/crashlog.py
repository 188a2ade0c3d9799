"""The last line of defence: an error ugpu did not expect becomes a short message and a log file.

The traceback, the command line and the versions go to a file under the user's log folder
(``~/.local/state/ugpu/log`` on Linux; ``UGPU_LOG_DIR`` overrides it), never to the terminal. A
report can quote that file.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

ENV_LOG_DIR = "UGPU_LOG_DIR"


def log_dir() -> Path:
    env = os.environ.get(ENV_LOG_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_log_dir

    return Path(user_log_dir("ugpu", appauthor=False))


def write_crash_log(exc: BaseException) -> Path:
    """Write ``exc``'s traceback and context to a new file; returns its path (a temp dir if need be)."""
    from ultrasinger_gpu_cli import __version__

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (
        f"ugpu {__version__} crashed at {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {' '.join(sys.argv)}\n"
        f"python {platform.python_version()} on {platform.platform()}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"ugpu-crash-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return Path(os.devnull)  # pragma: no cover - nowhere to write at all


def describe(exc: BaseException) -> str:
    """One line for people: the error's type and first line, without a traceback."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
