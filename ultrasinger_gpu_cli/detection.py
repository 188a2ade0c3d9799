"""Detection: what this machine has, what the installed frameworks can do with it, and the
plan target the resolver works from. Core code: no Typer, no rich.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.facts import Detection, FrameworkInfo, GpuCompatibility, GpuInfo, HostInfo
from ultrasinger_gpu_cli import frameworks as fw
from ultrasinger_gpu_cli.frameworks import check_compatibility, fingerprint, tensorflow_note
from ultrasinger_gpu_cli.nvml import Nvml, get_nvml
from ultrasinger_gpu_cli.resolver import Plan, PlanTarget, resolve
from ultrasinger_gpu_cli.store import Store


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


def _pick(gpus: list[GpuInfo] | tuple[GpuInfo, ...], gpu_index: int) -> GpuInfo:
    by_index = {g.index: g for g in gpus}
    if gpu_index not in by_index:
        raise InvalidSettingError(
            f"invalid GPU index {gpu_index}; valid choices: {', '.join(str(i) for i in sorted(by_index))}"
        )
    return by_index[gpu_index]


def _gpu_target(gpu: GpuInfo, compat: GpuCompatibility | None) -> PlanTarget:
    return PlanTarget(
        name=gpu.name or f"GPU {gpu.index}",
        vram_total_mb=gpu.vram_total_mb,
        compute_capability=gpu.compute_capability,
        gpu_index=gpu.index,
        gpu_id=gpu.uuid,
        torch_can_run=compat.torch_can_run if compat else None,
        torch_reason=compat.reason if compat else None,
        torch_fix=compat.fix_command if compat else None,
    )


def target_from_detection(detection: Detection, gpu_index: int = 0) -> PlanTarget:
    """The plan target for GPU ``gpu_index`` of a detection, or the CPU when there is none."""
    if not detection.usable_gpus:
        return PlanTarget(name=f"CPU: {detection.host.cpu_model}")
    gpu = _pick(detection.usable_gpus, gpu_index)
    return _gpu_target(gpu, detection.compatibility_of(gpu.index))


def quick_target(store: Store | None, gpu_index: int = 0, nvml: Nvml | None = None) -> PlanTarget:
    """A plan target without importing any framework: NVML live, PyTorch facts from the cache."""
    nvml = nvml or get_nvml()
    all_gpus = nvml.gpus()
    if store is not None and all_gpus:
        store.record_gpus(all_gpus, nvml.cuda_driver_version(), nvml.driver_version())  # keys the overrides
    gpus = [g for g in all_gpus if not g.lost]
    if not gpus:
        return PlanTarget(name=f"CPU: {_cpu_model()}")
    gpu = _pick(gpus, gpu_index)
    key = fingerprint(nvml.driver_version(), len(all_gpus))
    cached = store.cached_frameworks(key) if store is not None else None
    compat = check_compatibility(gpu, cached.torch, nvml.cuda_driver_version()) if cached else None
    return _gpu_target(gpu, compat)


def hypothetical_target(vram_gb: float, name: str | None = None, compute_capability: str | None = None) -> PlanTarget:
    """A card that is not in this machine (``--assume-vram``)."""
    if not vram_gb > 0:
        raise InvalidSettingError(f"invalid --assume-vram {vram_gb!r}; it must be a number of GB above 0")
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
    overrides = {} if store is None or target.hypothetical else store.overrides(target.gpu_id)
    return resolve(target, mode, vram_limit_gb, overrides=overrides, flags=flags)
