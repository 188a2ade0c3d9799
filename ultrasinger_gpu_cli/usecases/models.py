"""``ugpu models``: which weights the plan needs, per component and backend; verify; pull."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.weights import models, verify
from ultrasinger_gpu_cli.components import COMPONENTS, PIPELINE_ORDER, spec
from ultrasinger_gpu_cli.plan.detection import plan_for, quick_target
from ultrasinger_gpu_cli.errors import InvalidSettingError, UgpuError
from ultrasinger_gpu_cli.files import sha256_of
from ultrasinger_gpu_cli.weights.models import ModelStatus
from ultrasinger_gpu_cli.store.db import Store


def model_statuses(store: Store, components: list[str] | None = None, *, model: str | None = None,
                   backend: str | None = None, mode: str = "balanced", models_dir: Path | None = None) -> list[ModelStatus]:  # fmt: skip
    """The weights each component's planned backend needs, in pipeline order."""
    chosen = list(components or PIPELINE_ORDER)
    for name in chosen:
        spec(name)  # refuses an unknown component, listing the valid ones
    if (model is not None or backend is not None) and len(chosen) != 1:
        raise InvalidSettingError("--model and --backend name one component's: give exactly one, "
                                  "e.g. `ugpu models pull whisper --model medium`")  # fmt: skip
    given = {k: v for k, v in (("model", model), ("backend", backend)) if v is not None}
    # The plan with the given model and backend as flags: a backend brings its own models.
    plan = plan_for(store, quick_target(store), mode, flags={chosen[0]: given} if given else None)
    out = []
    for name in chosen:
        component = spec(name)
        settings = plan.components[name].values()
        chosen_backend = component.backend(str(settings["backend"]))
        status = chosen_backend.model_status(str(settings["model"]), models.models_dir(models_dir))
        out.append(replace(status, backend=chosen_backend.name))
    return out


@dataclass(frozen=True)
class Verified:
    status: ModelStatus
    ok: bool
    checksums: dict[Path, str]
    notes: dict[Path, str]  # per file: what is wrong, or what could only be checked


def verify_models(statuses: list[ModelStatus]) -> list[Verified]:
    """SHA-256 where the digest is published, a structural check (every zip member's CRC) else."""
    return [Verified(s, *verify.verify(s)) for s in statuses]


@dataclass(frozen=True)
class Pulled:
    status: ModelStatus
    action: str  # "present", "ships with the package", "downloaded"


def pull_models(statuses: list[ModelStatus], models_dir: Path | None = None, *, force: bool = False) -> list[Pulled]:
    """Download what is missing (with ``force``, everything again), through each backend's
    downloader (needs internet)."""
    from ultrasinger_gpu_cli.weights.downloads import offline

    out = []
    for status in statuses:
        backend = spec(status.engine).backend(status.backend)
        if status.present and not (force and backend.pull is not None):
            out.append(Pulled(status, "present"))
        elif backend.pull is None:
            out.append(Pulled(status, backend.ships_with or "ships with the package"))
        else:
            if force:
                for f in status.files:
                    f.path.unlink(missing_ok=True)
            try:
                extra = {"download": not offline()} if backend.pull_offline else {}
                backend.pull(status, models.models_dir(models_dir), **extra)
            except OSError as exc:
                from ultrasinger_gpu_cli.errors import from_os_error

                known = from_os_error(exc)
                if known is not None:
                    raise known from exc
                raise UgpuError(f"downloading {status.engine} {status.model} failed: {exc}",
                                hint="check the internet connection, and that the models folder is writable") from exc  # fmt: skip
            out.append(Pulled(status, "downloaded"))
    return out




@dataclass(frozen=True)
class BackendInfo:
    component: str
    backend: str
    default: bool
    installed: bool
    install: str
    summary: str

    def to_dict(self) -> dict[str, object]:
        return {"component": self.component, "backend": self.backend, "default": self.default,
                "installed": self.installed, "install": self.install, "summary": self.summary}  # fmt: skip


def backends_listing() -> list[BackendInfo]:
    """Every registered backend of every component: installed or not, and how to install it."""
    out = []
    for name in COMPONENTS:
        component = spec(name)
        for backend_name in component.backend_names():
            ref, backend = component.ref(backend_name), component.backend(backend_name)
            out.append(BackendInfo(name, backend_name, backend_name == component.default_backend,
                                   not ref.missing_requirements(), ref.install, backend.summary))  # fmt: skip
    return out


def listing_response(statuses: list[ModelStatus]) -> dict[str, Any]:
    """``ugpu models list --json`` and ``GET /api/models``: the weights and the backends."""
    return {"models": [s.to_dict() for s in statuses], "backends": [b.to_dict() for b in backends_listing()]}


# -- weights the user already has: ugpu models pull --from PATH -------------------------------------
@dataclass(frozen=True)
class Imported:
    component: str
    backend: str
    model: str
    files: tuple[Path, ...]  # where they are now
    checked: str  # how they were verified


def _atomic_copy(source: Path, target: Path) -> None:
    """``source`` (links followed) to ``target``, whole or not at all."""
    import os
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.importing-{os.getpid()}")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _faster_whisper_name(folder: Path) -> str | None:
    """The model a faster-whisper folder holds, from its path as the hub cache or a download names
    it (``models--Systran--faster-whisper-tiny.en``, ``faster-whisper-large-v3``)."""
    import re

    for part in reversed(folder.resolve().parts):
        found = re.search(r"faster-whisper-(.+)$", part)
        if found:
            return found.group(1)
    return None


_AGAIN = "copy it again from where it came from"


def _refuse_damaged(path: Path) -> None:
    problem = verify.check_structure(path)
    if problem:
        raise UgpuError(f"{path}: {problem}", hint=_AGAIN)


def import_model(source: Path, models_dir: Path | None = None, *, model: str | None = None,
                 force: bool = False) -> list[Imported]:  # fmt: skip
    """Import weights the user already has, without the network: a faster-whisper folder (as
    faster-whisper loads it: Systran's layout or a converted one), an openai-whisper ``.pt``, or
    Demucs ``.th`` files (one, or a folder of them with its bag ``.yaml``). Each file is checked
    (its published SHA-256 where one exists, else its structure) before it is copied, whole, to
    where ugpu looks: the models folder, or the libraries' caches."""
    source = source.expanduser()
    if not source.exists():
        raise UgpuError(f"{source}: no such file or folder", hint="give the folder or file holding the weights")
    if source.is_dir() and (source / "model.bin").is_file():
        return [_import_faster_whisper(source, models_dir, model, force)]
    if source.is_file() and source.suffix == ".pt":
        return [_import_whisper_checkpoint(source, models_dir, model, force)]
    checkpoints = sorted(source.glob("*.th")) if source.is_dir() else [source] if source.suffix == ".th" else []
    if checkpoints:
        return _import_demucs(source, checkpoints, models_dir)
    raise UgpuError(f"{source}: not weights ugpu can import",
                    hint="a faster-whisper folder (with model.bin), an openai-whisper .pt, or Demucs .th files")  # fmt: skip


def _import_faster_whisper(source: Path, models_dir: Path | None, model: str | None, force: bool) -> Imported:
    from ultrasinger_gpu_cli.engines.faster_whisper_engine import FOLDER, model_files

    name = model or _faster_whisper_name(source)
    if not name:
        raise InvalidSettingError(f"{source}: which Whisper model is this folder? Its path does not say",
                                  hint=f"ugpu models pull --from {source} --model tiny.en (its name)")  # fmt: skip
    files = model_files(source)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UgpuError(f"{source}: not a faster-whisper folder: {', '.join(missing)} missing",
                        hint="a CTranslate2 Whisper folder has model.bin, config.json, tokenizer.json and a vocabulary")  # fmt: skip
    for f in files:
        _refuse_damaged(f)
    target = (models_dir or models._cache_home()) / FOLDER / name
    if target.exists() and any(target.iterdir()) and not force:
        raise UgpuError(f"{target} already holds faster-whisper {name}", hint="add --force to replace it")
    for f in files:
        _atomic_copy(f, target / f.name)
    return Imported("whisper", "faster-whisper", name, tuple(target / f.name for f in files),
                    "structure (no published checksum)")  # fmt: skip


def _import_whisper_checkpoint(source: Path, models_dir: Path | None, model: str | None, force: bool) -> Imported:
    from ultrasinger_gpu_cli.weights.checksums import WHISPER_SHA256

    digest = sha256_of(source)
    published = next((n for n, d in WHISPER_SHA256.items() if d == digest), None)
    given = models.whisper_name(model) if model else None
    if given is not None and published is not None and given != published:
        raise InvalidSettingError(f"{source} is Whisper {published} (by its SHA-256), not {model}", hint=f"--model {published}")
    name = published or given
    if name is None:
        raise InvalidSettingError(f"{source}: not a published Whisper checkpoint (its SHA-256 matches none)",
                                  hint=f"ugpu models pull --from {source} --model NAME imports it anyway, checked for structure")  # fmt: skip
    if published is None:
        _refuse_damaged(source)
    target = models.whisper_status(name, models_dir).files[0].path
    if target.is_file() and not force and sha256_of(target) == digest:
        return Imported("whisper", "openai-whisper", name, (target,), "already there (same SHA-256)")
    _atomic_copy(source, target)
    return Imported("whisper", "openai-whisper", name, (target,), "published SHA-256" if published else "structure")


def _import_demucs(source: Path, checkpoints: list[Path], models_dir: Path | None) -> list[Imported]:
    from ultrasinger_gpu_cli.weights.checksums import DEMUCS_SHA256_PREFIX

    repo = models_dir / "demucs" if models_dir is not None else models.torch_hub_checkpoints()
    out = []
    for th in checkpoints:
        sig, _, prefix = th.stem.partition("-")
        expected = prefix or DEMUCS_SHA256_PREFIX.get(sig)
        if expected:
            digest = sha256_of(th)
            if not digest.startswith(expected):
                raise UgpuError(f"{th}: SHA-256 {digest[:12]}... does not match {expected}", hint=_AGAIN)
        else:
            _refuse_damaged(th)
        _atomic_copy(th, repo / th.name)
        out.append(Imported("demucs", "demucs", sig, (repo / th.name,), "published SHA-256" if expected else "structure"))
    for bag in sorted(source.glob("*.yaml")) if source.is_dir() and models_dir is not None else []:
        models.read_bag(bag)  # a damaged bag is refused
        _atomic_copy(bag, repo / bag.name)
    return out
