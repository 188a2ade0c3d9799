"""Detection: what this machine has, what the installed frameworks can do with it, and the
plan target the resolver works from. Core code: no Typer, no rich.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import Detection, FrameworkInfo, GpuCompatibility, GpuInfo, HostInfo
from ultrasinger_gpu_cli.gpu import frameworks as fw
from ultrasinger_gpu_cli.gpu.frameworks import check_compatibility, fingerprint, tensorflow_note
from ultrasinger_gpu_cli.gpu.nvml import Nvml, get_nvml
from ultrasinger_gpu_cli.plan.resolver import Plan, PlanTarget, resolve, validate_vram_gb
from ultrasinger_gpu_cli.store.db import Store


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_info() -> HostInfo:
    import psutil

    return HostInfo(
        cpu_model=_cpu_model(),
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_cores_logical=psutil.cpu_count(logical=True) or os.cpu_count(),
        ram_total_mb=int(psutil.virtual_memory().total // (1024 * 1024)),
        os=f"{platform.system()} {platform.release()}",
        python_version=platform.python_version(),
    )


def detect(
    store: Store | None,
    *,
    force: bool = False,
    nvml: Nvml | None = None,
    probe: Callable[[], FrameworkInfo] | None = None,
) -> Detection:
    """Read every GPU through NVML (always live) and the frameworks (cached unless ``force``)."""
    nvml = nvml or get_nvml()
    gpus = tuple(nvml.gpus())
    driver = nvml.driver_version()
    cuda = nvml.cuda_driver_version()

    key = fingerprint(driver, len(gpus))
    frameworks = None if (force or store is None) else store.cached_frameworks(key)
    if frameworks is None:
        frameworks = probe() if probe else fw.probe_frameworks(gpu_present=bool(gpus))
        if store is not None:
            store.save_frameworks(key, frameworks)

    compatibility = tuple(check_compatibility(g, frameworks.torch, cuda) for g in gpus)
    warnings: list[str] = []
    for gpu in gpus:
        if gpu.lost:
            warnings.append(f"GPU {gpu.index} ({gpu.name or 'unknown'}) was lost during detection: {gpu.error}")
    for item in compatibility:
        if item.torch_can_run is False:
            warnings.append(f"GPU {item.gpu_index}: {item.reason}")
    for gpu in gpus:
        note = None if gpu.lost else tensorflow_note(gpu, frameworks.tensorflow)
        if note:
            warnings.append(f"GPU {gpu.index}: {note}")
    warnings.extend(frameworks.torch.warnings)

    if store is not None:
        store.record_gpus(gpus, cuda, driver)
    return Detection(
        gpus=gpus,
        host=host_info(),
        frameworks=frameworks,
        compatibility=compatibility,
        driver_version=driver,
        cuda_driver_version=cuda,
        nvml_error=nvml.unavailable_reason,
        warnings=tuple(dict.fromkeys(warnings)),
    )


#: What ``--gpu`` takes: an NVML index (``1``) or a UUID (``GPU-5b8d...``, a unique prefix is enough).
GpuSelector = str | int


def check_selector(selector: GpuSelector, gpus: list[GpuInfo] | tuple[GpuInfo, ...]) -> None:
    """``--gpu`` is an index (0, 1, ...) or a UUID (``GPU-...``); on a machine without a GPU only 0."""
    text = str(selector).strip()
    if not (text.isdigit() or text.upper().startswith(("GPU-", "MIG-"))):
        raise InvalidSettingError(f"invalid GPU {text!r}; give its index (0, 1, ...) or its UUID (GPU-...)")
    if not gpus and text != "0":
        raise InvalidSettingError(f"invalid GPU {text!r}: this machine has no usable NVIDIA GPU (ugpu runs on the CPU)")


def pick_gpu(gpus: list[GpuInfo] | tuple[GpuInfo, ...], selector: GpuSelector) -> GpuInfo:
    """The GPU ``--gpu`` names, by NVML index or UUID; InvalidSettingError listing the choices."""
    check_selector(selector, gpus)
    text = str(selector).strip()
    if text.isdigit():
        found = [g for g in gpus if g.index == int(text)]
    else:
        wanted = text.lower()
        found = [g for g in gpus if g.uuid and (g.uuid.lower() == wanted or g.uuid.lower().startswith(wanted))]
        if len(found) > 1:
            found = [g for g in found if (g.uuid or "").lower() == wanted]
    if len(found) != 1:
        choices = ", ".join(f"{g.index} ({g.uuid})" if g.uuid else str(g.index) for g in gpus) or "none (no GPU)"
        raise InvalidSettingError(f"invalid GPU {text!r}; valid choices (index or UUID): {choices}")
    return found[0]


def _gpu_target(gpu: GpuInfo, compat: GpuCompatibility | None) -> PlanTarget:
    return PlanTarget(
        name=gpu.name or f"GPU {gpu.index}",
        vram_total_mb=gpu.vram_total_mb,
        compute_capability=gpu.compute_capability,
        gpu=gpu.identity,
        torch_can_run=compat.torch_can_run if compat else None,
        torch_reason=compat.reason if compat else None,
        torch_fix=compat.fix_command if compat else None,
    )


def target_from_detection(detection: Detection, gpu: GpuSelector = 0) -> PlanTarget:
    """The plan target for the GPU ``gpu`` names (index or UUID), or the CPU when there is none."""
    if not detection.usable_gpus:
        check_selector(gpu, ())
        return PlanTarget(name=f"CPU: {detection.host.cpu_model}")
    info = pick_gpu(detection.usable_gpus, gpu)
    return _gpu_target(info, detection.compatibility_of(info.index))


def quick_target(store: Store | None, gpu: GpuSelector = 0, nvml: Nvml | None = None) -> PlanTarget:
    """A plan target without importing any framework: NVML live, PyTorch facts from the cache."""
    nvml = nvml or get_nvml()
    all_gpus = nvml.gpus()
    if store is not None and all_gpus:
        store.record_gpus(all_gpus, nvml.cuda_driver_version(), nvml.driver_version())  # keys the overrides
    gpus = [g for g in all_gpus if not g.lost]
    if not gpus:
        check_selector(gpu, ())
        return PlanTarget(name=f"CPU: {_cpu_model()}")
    picked = pick_gpu(gpus, gpu)
    key = fingerprint(nvml.driver_version(), len(all_gpus))
    cached = store.cached_frameworks(key) if store is not None else None
    compat = check_compatibility(picked, cached.torch, nvml.cuda_driver_version()) if cached else None
    return _gpu_target(picked, compat)


def hypothetical_target(vram_gb: float, name: str | None = None, compute_capability: str | None = None) -> PlanTarget:
    """A card that is not in this machine (``--assume-vram``)."""
    vram_gb = validate_vram_gb("--assume-vram", vram_gb)
    if compute_capability is not None:
        major, _, minor = compute_capability.partition(".")
        if not (major.isdigit() and (minor == "" or minor.isdigit())):
            raise InvalidSettingError(f"invalid compute capability {compute_capability!r}; write it like 12.0 or 8.6")
        compute_capability = f"{int(major)}.{int(minor or 0)}"
    return PlanTarget(
        name=name or f"a {vram_gb:g} GB GPU",
        vram_total_mb=int(vram_gb * 1024),
        compute_capability=compute_capability,
        hypothetical=True,
    )


def plan_for(
    store: Store | None, target: PlanTarget, mode: str = "balanced", vram_limit_gb: float | None = None,
    flags: dict | None = None,
) -> Plan:  # fmt: skip
    """The resolver with this target's stored overrides (none for a hypothetical card)."""
    overrides = {} if store is None else store.overrides(target.settings_key)
    return resolve(target, mode, vram_limit_gb, overrides=overrides, flags=flags)
