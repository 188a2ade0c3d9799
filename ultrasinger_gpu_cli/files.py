"""Files written so that nothing half-written looks finished, and a file's content hash.

Every file ugpu writes goes to ``.NAME.partial-PID-THREAD`` beside its target (:func:`partial_path`:
two threads of one process, a server's workers, may write the same file) and is renamed into place
only when it is complete (:func:`atomic_path`; a killed run's leftovers are swept by
:func:`.paths.sweep_partials`). :func:`sha256_of` is a file's identity: a song's (its folder, its
resume cache entries, its seeds) and a weights file's.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(target: Path) -> Path:
    """Where ``target`` is written until it is complete: beside it, named for this process and
    thread (:func:`.paths.sweep_partials` removes a dead process's)."""
    return target.with_name(f".{target.name}.partial-{os.getpid()}-{threading.get_native_id()}")


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(target)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
