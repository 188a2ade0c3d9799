"""``ugpu models``: which weights the plan needs, per component and backend; verify; pull."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ultrasinger_gpu_cli import models
from ultrasinger_gpu_cli.components import COMPONENTS, PIPELINE_ORDER, spec
from ultrasinger_gpu_cli.detection import plan_for, quick_target
from ultrasinger_gpu_cli.errors import InvalidSettingError, UgpuError
from ultrasinger_gpu_cli.models import ModelStatus
from ultrasinger_gpu_cli.store import Store


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
    return [Verified(s, *models.verify(s)) for s in statuses]


@dataclass(frozen=True)
class Pulled:
    status: ModelStatus
    action: str  # "present", "ships with the package", "downloaded"


def pull_models(statuses: list[ModelStatus], models_dir: Path | None = None, *, force: bool = False) -> list[Pulled]:
    """Download what is missing (with ``force``, everything again), through each backend's
    downloader (needs internet)."""
    from ultrasinger_gpu_cli.downloads import offline

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
            backend = component.backend(backend_name)
            out.append(BackendInfo(name, backend_name, backend_name == component.default_backend,
                                   not backend.missing_requirements(), backend.install, backend.summary))  # fmt: skip
    return out
