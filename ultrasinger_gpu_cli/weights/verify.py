"""Is a weights file what it should be: its digest against the one its name or the project's
list carries, else its structure (a truncated CTranslate2 ``model.bin``, a damaged PyTorch zip)
checked without loading it."""

from __future__ import annotations

import json
from pathlib import Path

from ultrasinger_gpu_cli.errors import ModelDamagedError
from ultrasinger_gpu_cli.files import sha256_of
from ultrasinger_gpu_cli.weights.models import ModelStatus, read_bag


def _ct2_problem(path: Path) -> str | None:
    """What is wrong with a CTranslate2 ``model.bin``, or None. Its layout: a format version, the
    spec's name and revision, then each variable (name, rank, dims, dtype, byte count, bytes),
    then the aliases. Every variable's bytes must be there and the file must end where the
    layout does: a truncated or padded download is found without loading it."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            def read(n: int) -> bytes:
                data = fh.read(n)
                if len(data) < n:
                    raise EOFError
                return data

            def text() -> bytes:
                (n,) = struct.unpack("<H", read(2))
                return read(n).rstrip(b"\0")

            (version,) = struct.unpack("<I", read(4))
            if not 1 <= version <= 100:
                return "not a CTranslate2 model"
            spec_name = text() if version >= 2 else b"Spec"
            if not spec_name.endswith(b"Spec"):
                return "not a CTranslate2 model"
            if version < 4:
                return None  # an old layout: only its header is checked
            read(4)  # the spec's revision
            (count,) = struct.unpack("<I", read(4))
            for _ in range(count):
                text()
                (rank,) = struct.unpack("<B", read(1))
                read(4 * rank)
                read(1)  # dtype
                (length,) = struct.unpack("<I", read(4))
                fh.seek(length, 1)
                if fh.tell() > size:
                    raise EOFError
            (aliases,) = struct.unpack("<I", read(4))
            for _ in range(aliases):
                text()
                text()
            end = fh.tell()
    except EOFError:
        return "truncated: the file ends inside the model (an interrupted download or copy)"
    except OSError as exc:
        return f"not readable ({exc.strerror})"
    if end != size:
        return f"{size - end} bytes after the model's end: not the file CTranslate2 wrote"
    return None


def check_structure(path: Path) -> str | None:
    """What is wrong with a model file whose checksum is not known, or None: PyTorch checkpoints
    are zip archives whose every member's CRC is checked; a bag's yaml must parse."""
    import zipfile

    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"not readable JSON ({exc})"
        return None
    if path.name == "model.bin":  # a CTranslate2 model: walked variable by variable to its end
        return _ct2_problem(path)
    if path.suffix == ".txt":  # a CTranslate2 vocabulary (Systran's folders): a token per line, UTF-8
        try:
            tokens = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return f"not a readable vocabulary ({exc})"
        return None if len(tokens) > 1 else "an empty vocabulary"
    if path.suffix in (".yaml", ".yml"):
        try:
            read_bag(path)
        except ModelDamagedError as exc:
            return exc.message
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a readable PyTorch checkpoint ({exc})"
    return None if bad is None else f"damaged inside: {bad}"


def verify(status: ModelStatus) -> tuple[bool, dict[Path, str], dict[Path, str]]:
    """Check every file: against the digest its name or URL carries, else the release's digest from
    the project's list (checksums.py), else (no digest known) its structure, and say so.
    Returns (all fine, {path: sha256}, {path: what is wrong, or what could only be checked})."""
    sums: dict[Path, str] = {}
    notes: dict[Path, str] = {}
    ok = True
    for f in status.files:
        if not f.present:
            notes[f.path], ok = "missing", False
            continue
        digest = sums[f.path] = sha256_of(f.path)
        expected = f.expected_sha256_prefix or f.published_sha256
        if expected:
            if not digest.startswith(expected):
                what = "the digest in its name" if f.expected_sha256_prefix else "the published release"
                notes[f.path], ok = f"SHA-256 {digest[:12]}... does not match {what} ({expected[:12]}...)", False
            continue
        problem = check_structure(f.path)
        if problem:
            notes[f.path], ok = problem, False
        else:
            notes[f.path] = "no published checksum: only its structure could be checked (it is intact)"
    return ok, sums, notes
