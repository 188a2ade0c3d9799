"""Use cases around the plan: detect, optimize, configure a component, the fallback ladders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ultrasinger_gpu_cli.components import SPECS, ParameterValues, spec
from ultrasinger_gpu_cli.plan.detection import GpuSelector, detect, hypothetical_target, plan_for, quick_target, target_from_detection
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import Detection
from ultrasinger_gpu_cli.run.fallback import Rung, ladder
from ultrasinger_gpu_cli.gpu.nvml import get_nvml
from ultrasinger_gpu_cli.plan.lanes import Lanes, batch_lanes
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, Plan, PlanTarget, resolve
from ultrasinger_gpu_cli.store.stats import RecordedFallback
from ultrasinger_gpu_cli.store.db import Store


@dataclass(frozen=True)
class Detected:
    detection: Detection
    plan: Plan

    @property
    def uses_gpu(self) -> bool:
        return self.plan.uses_gpu


def detect_machine(store: Store, *, gpu: GpuSelector = 0, mode: str = "balanced", vram_limit_gb: float | None = None,
                   force: bool = False) -> Detected:  # fmt: skip
    """``ugpu detect``: the GPUs, the frameworks, and the plan for the chosen GPU."""
    detection = detect(store, force=force)
    target = target_from_detection(detection, gpu)
    return Detected(detection, plan_for(store, target, mode, vram_limit_gb))


def run_target(store: Store | None, gpu: GpuSelector = 0) -> PlanTarget:
    """The plan target for commands that run engines: they import torch anyway, so when the
    framework check is not cached yet, run it (``ugpu detect``'s) instead of guessing."""
    target = quick_target(store, gpu)
    if target.is_gpu and target.torch_can_run is None:
        target = target_from_detection(detect(store), gpu)
    return target


def worker_plan(store: Store | None, gpu: GpuSelector | None, mode: str = "balanced", vram_limit_gb: float | None = None,
                flags: dict | None = None, *, overrides: Mapping[str, Any] | None = None) -> Plan:  # fmt: skip
    """The one per-worker planner: the plan of a worker on the card ``gpu`` names (an NVML index
    or a UUID; None: the CPU), capped to ``vram_limit_gb``, with the user's stored overrides for
    that card: from ``store``, or as a driver handed them to a process that keeps no database
    (``overrides``, by target). ``ugpu run``, ``--gpus`` slots, Ray actors and the server's
    workers all plan here."""
    target = CPU_TARGET if gpu is None else run_target(store, gpu)
    if overrides is not None:
        given = dict(overrides.get(target.settings_key or "", {}))
    else:
        given = store.overrides(target.settings_key) if store is not None else {}
    return resolve(target, mode, vram_limit_gb, overrides=given, flags=flags)


@dataclass(frozen=True)
class Assumed:
    """A hypothetical card (``--assume-vram/--assume-gpu/--assume-cc``)."""

    vram_gb: float | None = None
    name: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class Optimized:
    plan: Plan
    cuda_version: str | None
    saved: dict[str, str] | None
    lanes: Lanes  # how a batch runs on this machine (on the CPU: several songs at once)


def host_lanes(plan: Plan, songs: int | None, asked: int | None = None) -> Lanes:
    """The lanes of a batch of ``songs`` on this machine: its cores (``OMP_NUM_THREADS`` where
    set) and the memory available now."""
    import psutil

    from ultrasinger_gpu_cli.gpu.devices import cpu_threads

    free = int(psutil.virtual_memory().available // (1024 * 1024))
    return batch_lanes(plan, songs, cpu_threads(), free, asked)


def optimize(store: Store, *, gpu: GpuSelector = 0, mode: str = "balanced", vram_limit_gb: float | None = None,
             assumed: Assumed = Assumed(), save: bool = False) -> Optimized:  # fmt: skip
    """``ugpu optimize``: the plan for this card (or a hypothetical one), optionally stored."""
    if (assumed.name or assumed.compute_capability) and assumed.vram_gb is None:
        raise InvalidSettingError("--assume-gpu and --assume-cc describe a hypothetical card: give --assume-vram too")
    if assumed.vram_gb is not None:
        target = hypothetical_target(assumed.vram_gb, assumed.name, assumed.compute_capability)
    else:
        target = quick_target(store, gpu)
    plan = plan_for(store, target, mode, vram_limit_gb)
    saved = store.save_plan(plan) if save else None
    cuda = None if target.hypothetical else get_nvml().cuda_driver_version()
    return Optimized(plan, cuda, saved, host_lanes(plan, None))


@dataclass(frozen=True)
class Configured:
    """``ugpu whisper|demucs|crepe`` without audio: the component's plan and stored override."""

    plan: Plan
    component: str
    override: ParameterValues
    action: str | None  # "saved", "reset", "reset (nothing stored)" or None (shown)


def validated_flags(component: str, flags: Mapping[str, object], *, save: bool, reset: bool, audio: bool) -> ParameterValues:
    """The flags of a component command, checked before anything is stored or run."""
    if save and reset:
        raise InvalidSettingError("--save and --reset cannot be combined")
    given = spec(component).validate(flags)
    if "backend" in given:
        spec(component).ref(str(given["backend"])).check_installed()
    if save and not given:
        raise InvalidSettingError(f"--save needs at least one setting to store (e.g. ugpu {component} --batch-size 8 --save)")
    if reset and audio:
        raise InvalidSettingError("--reset removes a stored override; run it without AUDIO")
    return given


def configure_component(store: Store, component: str, given: ParameterValues, *, save: bool = False,
                        reset: bool = False, gpu: GpuSelector = 0, mode: str = "balanced",
                        vram_limit_gb: float | None = None, target: PlanTarget | None = None) -> Configured:  # fmt: skip
    """Show, store (``--save``) or drop (``--reset``) a component's override; flags apply once."""
    target = target or quick_target(store, gpu)
    key = target.settings_key or "cpu"
    action = None
    if reset:
        action = "reset" if store.reset_override(key, component) else "reset (nothing stored)"
    elif save:
        store.save_override(key, component, dict(given), gpu_id=None if target.gpu is None else target.gpu.uuid)
        action = "saved"
    override = store.overrides(key).get(component, {})
    # Flags apply to this invocation; after --save they are the stored override itself.
    plan = plan_for(store, target, mode, vram_limit_gb, flags={} if save else {component: given})
    return Configured(plan, component, override, action)


@dataclass(frozen=True)
class Ladders:
    plan: Plan
    ladders: dict[str, list[Rung]]
    events: list[RecordedFallback]

    def to_dict(self) -> dict[str, Any]:
        """``/gpu/fallback``'s document (``ugpu fallback --json`` and the server's route)."""
        return {"ladders": {c: [{"settings": r.settings.values(), "label": r.label, "why": r.why} for r in rungs]
                            for c, rungs in self.ladders.items()},
                "events": [e.to_dict() for e in self.events]}  # fmt: skip


def fallback_ladders(store: Store, *, gpu: GpuSelector = 0, mode: str = "balanced", vram_limit_gb: float | None = None,
                     limit: int = 20) -> Ladders:  # fmt: skip
    """``ugpu fallback``: the ladder each stage would follow here, and the recent events."""
    plan = plan_for(store, quick_target(store, gpu), mode, vram_limit_gb)
    cpu = resolve(CPU_TARGET, mode)
    ladders = {c: ladder(c, plan.components[c].typed(), cpu.components[c].typed()) for c in SPECS}
    return Ladders(plan, ladders, store.recent_fallbacks(limit))
