"""The resume cache: each stage's result kept by (audio content hash, backend, stage settings), so
a run that was interrupted and started again skips what finished and gives the same result.

Entries are checked when read (a SHA-256 of their content stored with them); a damaged entry is
dropped with a notice and computed again. The cache is a convenience: a folder that cannot be
written costs resuming, never the song (said once). Whisper's words are kept as JSON
(:func:`words_data`, read back by :func:`checked_words`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ultrasinger_gpu_cli.files import atomic_path, write_text
from ultrasinger_gpu_cli.song.textfiles import read_json_or_none
from ultrasinger_gpu_cli.song.words import Word

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.store.db import Store

MAX_JSON_BYTES = 256 * 2**20


def resume_cache_dir(given: Path | None, store_path: Path | None, out_dir: Path) -> Path:
    """Where the resume cache is: the folder given, else ``cache/`` beside the database, else
    ``cache/`` in the output folder (no database)."""
    if given is not None:
        return Path(given)
    return (store_path.parent if store_path is not None else Path(out_dir)) / "cache"


def run_cache_dir(options: RunOptions, store: Store | None) -> Path:
    """A run's resume cache: its ``--cache-dir``, else beside its database, else in its output."""
    return resume_cache_dir(options.cache_dir, store.path if store is not None else None, options.out_dir)


def cache_key(*parts: Any) -> str:
    """An entry's name from what the result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def digest_json(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class StageCache:
    """The cache folder; ``notice`` tells people about a damaged entry or a folder it cannot write."""

    def __init__(self, folder: Path, notice: Callable[[str], None]) -> None:
        self.folder = folder
        self.notice = notice
        self._warned = False

    def path(self, key: str, suffix: str) -> Path:
        return self.folder / f"{key}{suffix}"

    # -- arrays (.npz) --------------------------------------------------------------------------------
    def save_arrays(self, key: str, **arrays: np.ndarray) -> None:
        def save() -> None:
            with atomic_path(self.path(key, ".npz")) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays, __sha256__=np.array(digest_arrays(arrays)))

        self._write(save)

    def load_arrays(self, key: str, *names: str) -> dict[str, np.ndarray] | None:
        """An entry's arrays, checked: its checksum and the arrays named. None when there is none
        (a damaged one is dropped)."""
        path = self.path(key, ".npz")
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "__sha256__"}
                stored = str(data["__sha256__"]) if "__sha256__" in data.files else None
            ok = stored == digest_arrays(arrays) and all(n in arrays for n in names)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            ok = False
        if ok:
            return arrays
        self.drop(path)
        return None

    # -- JSON -----------------------------------------------------------------------------------------
    def save_json(self, key: str, data: object) -> None:
        wrapped = {"sha256": digest_json(data), "data": data}
        self._write(lambda: write_text(self.path(key, ".json"), json.dumps(wrapped)))

    def load_json(self, key: str) -> Any:
        """An entry's JSON data, checked; None when there is none (a damaged one is dropped)."""
        path = self.path(key, ".json")
        if not path.exists():
            return None
        try:
            wrapped = read_json_or_none(path, cap_bytes=MAX_JSON_BYTES)
            data = wrapped["data"]  # type: ignore[index]
            if wrapped.get("sha256") != digest_json(data):  # type: ignore[union-attr]
                raise ValueError("checksum")
            return data
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.drop(path)
            return None

    # -- upkeep ---------------------------------------------------------------------------------------
    def drop(self, path: Path) -> None:
        """Remove a damaged (or no longer matching) entry, saying so."""
        self.notice(f"the resume cache entry {path.name} was damaged: it was removed and is computed again")
        try:
            path.unlink()
        except OSError:
            pass

    def _write(self, write: Callable[[], object]) -> None:
        try:
            write()
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self.notice(f"cannot write the resume cache in {self.folder} ({exc.strerror}): "
                            "an interrupted run will start its songs again")  # fmt: skip


def cached_segments(data: dict[str, Any]) -> list[list[Word]] | None:
    """Whisper's cached words, or None when the entry is not what ugpu wrote."""
    try:
        return [[Word(str(w["word"]), float(w["start"]), float(w["end"]), w.get("probability"),
                      singer=int(w.get("singer", 0))) for w in seg]
                for seg in data["segments"]]  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def checked_words(data: Any) -> dict[str, Any] | None:
    """A cached Whisper entry, where it is what ugpu writes."""
    return data if isinstance(data, dict) and "language" in data and cached_segments(data) is not None else None


def words_data(language: str | None, segments: list[list[Word]]) -> dict[str, Any]:
    """Whisper's words as the resume cache keeps them."""
    return {"language": language, "segments": [[w.to_dict() for w in seg] for seg in segments]}


def words_from_segments(segments: list[list[Word]]) -> list[Word]:
    """Whisper's words, stripped, each segment's first word starting a phrase; empty ones dropped."""
    return [replace(w, text=w.text.strip(), phrase_start=i == 0)
            for seg in segments for i, w in enumerate(seg) if w.text.strip()]  # fmt: skip
