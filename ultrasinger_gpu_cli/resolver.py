"""The one resolver: (GPU facts, mode, VRAM limit, stored overrides, flags) -> a plan.

Pure: no I/O, no imports of torch or the store. Every value in the plan carries the reason
it was chosen and where it came from, in increasing precedence:

``tier``     the tier table's default for this much VRAM (:mod:`.tiers`)
``mode``     scaled by conservative / balanced / aggressive
``hardware`` changed because this card or device cannot run the default (no fp16 on the
             CPU or before Volta, a batch that would not fit the VRAM budget, no usable GPU)
``override`` a user setting stored with ``ugpu whisper|demucs|crepe --save``
``flag``     given on this command line
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.facts import nominal_gb, sm_name
from ultrasinger_gpu_cli.tiers import (
    COMPONENTS,
    COMPUTE_TYPES,
    CPU_TIER,
    CREPE_CAPACITIES,
    DEMUCS_MAX_CHUNK,
    DEMUCS_MIN_CHUNK,
    DEMUCS_MODELS,
    DEVICES,
    MIN_USABLE_GPU_MB,
    MODE_TABLE,
    MODES,
    WHISPER_MODELS,
    WHISPER_STEP_DOWN,
    Tier,
    canonical_whisper,
    estimate_vram_mb,
    tier_for_vram,
)

SOURCES = ("tier", "mode", "hardware", "override", "flag")

#: The keys the design's ``POST /api/gpu/initialize`` response has per component.
API_KEYS = {
    "whisper": ("model", "batch_size", "compute_type"),
    "demucs": ("model", "chunk_size", "overlap"),
    "crepe": ("model_capacity", "step_size", "device"),
}

#: Parameters a user may set per component, in display order.
PARAMETERS = {
    "whisper": ("model", "batch_size", "compute_type", "device"),
    "demucs": ("model", "chunk_size", "overlap", "batch_size", "compute_type", "device"),
    "crepe": ("model_capacity", "step_size", "batch_size", "compute_type", "device"),
}

_UNITS = {"step_size": "ms", "chunk_size": "samples"}
_LABELS = {"override": "a stored override", "flag": "a flag"}


def _choices(name: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise InvalidSettingError(f"invalid {name} {value!r}; valid choices: {', '.join(valid)}")
    return value


def _int_range(name: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidSettingError(f"invalid {name} {value!r}; it must be a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise InvalidSettingError(f"invalid {name} {value!r}; it must be a whole number from {low} to {high}")
    return number


def validate_setting(component: str, parameter: str, value: Any) -> Any:
    """Check and normalise one user-supplied value; raise :class:`InvalidSettingError`."""
    _choices("component", component, COMPONENTS)
    if parameter not in PARAMETERS[component]:
        raise InvalidSettingError(
            f"{component} has no setting {parameter!r}; valid settings: {', '.join(PARAMETERS[component])}"
        )
    if parameter == "device":
        return _choices("device", value, DEVICES)
    if parameter == "compute_type":
        return _choices("compute type", value, COMPUTE_TYPES)
    if parameter == "batch_size":
        return _int_range("batch size", value, 1, 4096 if component == "crepe" else 256)
    if component == "whisper" and parameter == "model":
        model = _choices("whisper model", value, WHISPER_MODELS)
        return "large-v3-turbo" if model == "turbo" else model
    if component == "demucs" and parameter == "model":
        return _choices("demucs model", value, DEMUCS_MODELS)
    if parameter == "chunk_size":
        return _int_range("chunk size", value, DEMUCS_MIN_CHUNK, DEMUCS_MAX_CHUNK)
    if parameter == "overlap":
        try:
            overlap = float(value)
        except (TypeError, ValueError):
            raise InvalidSettingError(f"invalid overlap {value!r}; it must be a number from 0 to 0.9") from None
        if not 0.0 <= overlap <= 0.9:
            raise InvalidSettingError(f"invalid overlap {value!r}; it must be a number from 0 to 0.9")
        return overlap
    if parameter == "model_capacity":
        return _choices("crepe model capacity", value, CREPE_CAPACITIES)
    if parameter == "step_size":
        return _int_range("step size (ms)", value, 1, 100)
    raise InvalidSettingError(f"unknown setting {component}.{parameter}")  # pragma: no cover


def validate_settings(settings: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Validate a ``{component: {parameter: value}}`` mapping; ``None`` values are dropped."""
    out: dict[str, dict[str, Any]] = {}
    for component, params in (settings or {}).items():
        _choices("component", component, COMPONENTS)
        clean = {p: validate_setting(component, p, v) for p, v in params.items() if v is not None}
        if clean:
            out[component] = clean
    return out


def validate_mode(mode: str) -> str:
    return _choices("mode", mode, MODES)


@dataclass(frozen=True)
class PlanTarget:
    """The machine a plan is for: a detected GPU, a hypothetical one, or the CPU."""

    name: str
    vram_total_mb: int | None = None
    compute_capability: str | None = None
    gpu_index: int | None = None
    gpu_id: str | None = None  # NVML UUID; None for the CPU and for hypothetical cards
    torch_can_run: bool | None = None  # None: not checked yet (run ugpu detect)
    torch_reason: str | None = None
    torch_fix: str | None = None
    hypothetical: bool = False

    @property
    def is_gpu(self) -> bool:
        return bool(self.vram_total_mb)

    @property
    def vram_total_gb(self) -> int:
        return nominal_gb(self.vram_total_mb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu_index": self.gpu_index,
            "gpu_id": self.gpu_id,
            "vram_total_mb": self.vram_total_mb,
            "vram_total_gb": self.vram_total_gb,
            "compute_capability": self.compute_capability,
            "sm": sm_name(self.compute_capability),
            "torch_can_run": self.torch_can_run,
            "hypothetical": self.hypothetical,
        }


@dataclass(frozen=True)
class Setting:
    value: Any
    reason: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "source": self.source}


@dataclass(frozen=True)
class ComponentPlan:
    component: str
    settings: dict[str, Setting]
    estimated_vram_mb: int | None  # None on the CPU

    def value(self, parameter: str) -> Any:
        return self.settings[parameter].value

    def values(self) -> dict[str, Any]:
        return {name: s.value for name, s in self.settings.items()}

    @property
    def device(self) -> str:
        return self.value("device")

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {name: s.to_dict() for name, s in self.settings.items()},
            "estimated_vram_mb": self.estimated_vram_mb,
        }


@dataclass(frozen=True)
class Plan:
    target: PlanTarget
    mode: str
    tier: Tier
    vram_limit_gb: float | None
    vram_budget_mb: int | None
    components: dict[str, ComponentPlan]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def memory_fraction(self) -> float | None:
        """What ``torch.cuda.set_per_process_memory_fraction`` gets at run time."""
        if not self.vram_budget_mb or not self.target.vram_total_mb:
            return None
        return round(min(1.0, self.vram_budget_mb / self.target.vram_total_mb), 4)

    def optimization_applied(self) -> dict[str, dict[str, Any]]:
        """The design's ``optimization_applied``: exactly its keys per component."""
        return {c: {k: self.components[c].value(k) for k in API_KEYS[c]} for c in COMPONENTS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "tier": {"key": self.tier.key, "label": self.tier.label},
            "vram_limit_gb": self.vram_limit_gb,
            "vram_budget_mb": self.vram_budget_mb,
            "memory_fraction": self.memory_fraction,
            "hypothetical": self.target.hypothetical,
            "target": self.target.to_dict(),
            "components": {c: p.to_dict() for c, p in self.components.items()},
            "notes": list(self.notes),
        }


def _gpu_usable(target: PlanTarget) -> tuple[bool, str | None]:
    if not target.is_gpu:
        return False, "no usable NVIDIA GPU was detected"
    if target.vram_total_mb < MIN_USABLE_GPU_MB:
        return False, f"{target.name} has only {target.vram_total_mb} MB of VRAM, too little for these models"
    if target.torch_can_run is False and not target.hypothetical:
        return False, target.torch_reason or "the installed PyTorch cannot run this card"
    return True, None


def _tier_defaults(component: str, tier: Tier) -> dict[str, Any]:
    if component == "whisper":
        return {"model": tier.whisper_model, "batch_size": tier.whisper_batch}
    if component == "demucs":
        return {
            "model": tier.demucs_model,
            "chunk_size": tier.demucs_chunk,
            "overlap": tier.demucs_overlap,
            "batch_size": tier.demucs_batch,
        }
    return {"model_capacity": tier.crepe_capacity, "step_size": tier.crepe_step_ms, "batch_size": tier.crepe_batch}


def _tier_reason(component: str, parameter: str, value: Any, tier: Tier) -> str:
    if parameter == "batch_size":
        unit = {"whisper": "voiced chunks of <= 30 s", "demucs": "chunks", "crepe": "pitch frames"}[component]
        return f"{value} {unit} per forward pass"
    if component == "demucs" and parameter == "model":
        return "best vocals; of its four one-hot models only the vocals one runs"
    if parameter == "chunk_size":
        if value == DEMUCS_MAX_CHUNK:
            return "7.8 s chunks: HTDemucs computes 7.8 s per chunk anyway, so the longest means fewest passes"
        return f"{value / 44_100:.1f} s chunks (HTDemucs takes at most 7.8 s)"
    if parameter == "overlap":
        return "demucs's default overlap between chunks"
    if parameter == "step_size":
        return f"a pitch frame every {value} ms" + (" (half the frames of 5 ms)" if value == 10 else "")
    if component == "crepe" and parameter == "model_capacity":
        return "tiny runs ~5x real time on a CPU, full ~0.3x" if tier.is_cpu else "full, the most accurate CREPE"
    return tier.why


def _describe(parameter: str, value: Any) -> str:
    unit = _UNITS.get(parameter)
    return f"{value} {unit}" if unit else str(value)


class _Builder:
    """Accumulates one component's settings, each write recording reason and source."""

    def __init__(self) -> None:
        self.settings: dict[str, Setting] = {}

    def set(self, parameter: str, value: Any, reason: str, source: str) -> None:
        self.settings[parameter] = Setting(value, reason, source)

    def value(self, parameter: str) -> Any:
        return self.settings[parameter].value

    def source(self, parameter: str) -> str:
        return self.settings[parameter].source

    def user_set(self, parameter: str) -> bool:
        return self.source(parameter) in ("override", "flag")

    def values(self) -> dict[str, Any]:
        return {p: s.value for p, s in self.settings.items()}


def _plan_component(
    component: str,
    *,
    target: PlanTarget,
    gpu_tier: Tier,
    gpu_ok: bool,
    gpu_reason: str | None,
    mode: str,
    budget_mb: int | None,
    override: dict[str, Any],
    flag: dict[str, Any],
    notes: list[str],
    cpu_source: str = "tier",
) -> ComponentPlan:
    b = _Builder()

    # Device first: it decides which tier row the other defaults come from.
    if gpu_ok:
        b.set("device", "cuda", f"{target.name} is usable by PyTorch", "tier")
    else:
        b.set("device", "cpu", f"CPU: {gpu_reason}", cpu_source)
    for source, given in (("override", override), ("flag", flag)):
        if "device" in given:
            b.set("device", given["device"], f"{given['device']} set by {_LABELS[source]}", source)
    if b.value("device") == "cuda" and not gpu_ok:
        notes.append(f"{component}: cuda was requested but {gpu_reason}; it runs on the CPU")
        b.set("device", "cpu", f"cuda requested, but {gpu_reason}", "hardware")
    on_gpu = b.value("device") == "cuda"
    tier = gpu_tier if on_gpu else CPU_TIER

    for parameter, value in _tier_defaults(component, tier).items():
        b.set(parameter, value, f"{tier.label} tier: {_tier_reason(component, parameter, value, tier)}", "tier")

    # Mode: scale batches, and Demucs chunk length where the mode sets one.
    m = MODE_TABLE[mode]
    if m.batch_factor != 1.0:
        base = b.value("batch_size")
        b.set("batch_size", max(1, int(base * m.batch_factor)), f"{mode}: {m.why} ({base} in the tier table)", "mode")
    if component == "demucs" and m.demucs_chunk:
        b.set("chunk_size", m.demucs_chunk, f"{mode}: the longest chunk HTDemucs takes (7.8 s), fewest overlaps", "mode")

    # Precision follows the device and the card.
    if component == "whisper":
        cc = target.compute_capability
        if not on_gpu:
            b.set("compute_type", "float32", "the CPU has no fast float16 path; whisper would fall back anyway", "tier")
        elif cc and tuple(int(x) for x in cc.split(".")) < (7, 0):
            b.set("compute_type", "float32", f"{sm_name(cc)} has no fast float16 (tensor cores arrive with sm_70)", "hardware")
        else:
            b.set("compute_type", "float16", "float16 halves weights and activations on tensor-core GPUs", "tier")
    else:
        b.set("compute_type", "float32", f"{component} runs in float32 (its reference precision)", "tier")

    for source, given in (("override", override), ("flag", flag)):
        for parameter, value in given.items():
            if parameter != "device":
                b.set(parameter, value, f"{_describe(parameter, value)} set by {_LABELS[source]}", source)

    if not on_gpu and b.value("compute_type") == "float16":
        b.set("compute_type", "float32", "float16 was requested, but it does not run on the CPU", "hardware")
    if component == "demucs" and b.value("model").startswith("htdemucs") and b.value("chunk_size") > DEMUCS_MAX_CHUNK:
        b.set("chunk_size", DEMUCS_MAX_CHUNK, "HTDemucs cannot take chunks longer than 7.8 s", "hardware")

    estimate = None
    if on_gpu and budget_mb:
        user_sized = any(b.user_set(p) for p in ("batch_size", "model", "model_capacity", "device") if p in b.settings)
        estimate, misfit = _fit(component, b, budget_mb, shrink=not user_sized)
        if misfit and not user_sized:
            notes.append(f"{component}: {misfit}; it runs on the CPU")
            return _plan_component(
                component, target=target, gpu_tier=gpu_tier, gpu_ok=False, gpu_reason=misfit, mode=mode,
                budget_mb=budget_mb, override=override, flag=flag, notes=notes, cpu_source="hardware",
            )  # fmt: skip
        if misfit:
            notes.append(
                f"{component}: {misfit}; on out-of-memory the fallback ladder halves the batch, "
                "then moves the stage to the CPU"
            )
    ordered = {p: b.settings[p] for p in PARAMETERS[component]}
    return ComponentPlan(component, ordered, estimate)


def _fit(component: str, b: _Builder, budget_mb: int, *, shrink: bool) -> tuple[int, str | None]:
    """Make the stage fit the VRAM budget: halve the batch; at 1, take the next smaller Whisper
    model with the batch it started with, and halve again.

    Settings the user sized (batch, model, device) are never shrunk: ``shrink`` is False.
    Returns the estimate and, when it still does not fit, why.
    """
    need = estimate_vram_mb(component, b.values())
    if need <= budget_mb or not shrink:
        return need, (None if need <= budget_mb else f"an estimated {need} MB exceeds the {budget_mb} MB VRAM budget")
    start_batch, start_model = b.settings["batch_size"], b.settings.get("model")
    models: tuple[str | None, ...] = (None,)
    if component == "whisper":
        current = canonical_whisper(start_model.value)
        models = (None, *(WHISPER_STEP_DOWN[WHISPER_STEP_DOWN.index(current) + 1 :] if current in WHISPER_STEP_DOWN else ()))
    for model in models:
        if model is not None:
            b.set("model", model, f"{start_model.value} does not fit the {budget_mb} MB budget; {model} does", "hardware")
            b.settings["batch_size"] = start_batch
        while (need := estimate_vram_mb(component, b.values())) > budget_mb and b.value("batch_size") > 1:
            batch = b.value("batch_size")
            b.set("batch_size", batch // 2, f"halved from {batch}: {need} MB would exceed the {budget_mb} MB budget", "hardware")
        if need <= budget_mb:
            return need, None
    return need, f"an estimated {need} MB exceeds the {budget_mb} MB VRAM budget"


def resolve(
    target: PlanTarget,
    mode: str = "balanced",
    vram_limit_gb: float | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    flags: dict[str, dict[str, Any]] | None = None,
) -> Plan:
    """Plan Whisper, Demucs and CREPE for ``target``. Raises :class:`InvalidSettingError`."""
    mode = validate_mode(mode)
    if vram_limit_gb is not None and not vram_limit_gb > 0:
        raise InvalidSettingError(f"invalid VRAM limit {vram_limit_gb!r}; it must be a number of GB above 0")
    overrides = validate_settings(overrides)
    flags = validate_settings(flags)
    notes: list[str] = []

    gpu_ok, gpu_reason = _gpu_usable(target)
    budget_mb = None
    gpu_tier = CPU_TIER
    if gpu_ok:
        effective_gb: float = target.vram_total_gb
        effective_mb = float(target.vram_total_mb)
        if vram_limit_gb is not None:
            if vram_limit_gb < effective_gb:
                effective_gb, effective_mb = vram_limit_gb, vram_limit_gb * 1024
                notes.append(f"VRAM limited to {vram_limit_gb:g} GB: planned as a {vram_limit_gb:g} GB card")
            else:
                notes.append(f"VRAM limit {vram_limit_gb:g} GB is not below the card's {effective_gb} GB")
        gpu_tier = tier_for_vram(effective_gb)
        budget_mb = int(effective_mb * MODE_TABLE[mode].vram_fraction)
    elif target.is_gpu:
        notes.append(f"planned for the CPU: {gpu_reason}")
        if target.torch_fix:
            notes.append(f"to use the GPU: {target.torch_fix}")
    if target.torch_can_run is None and target.is_gpu and not target.hypothetical:
        notes.append("PyTorch's support for this card is not checked yet: run `ugpu detect`")
    if target.hypothetical:
        notes.append(f"hypothetical: planned for {target.name}, which is not in this machine")

    components = {
        c: _plan_component(
            c,
            target=target,
            gpu_tier=gpu_tier,
            gpu_ok=gpu_ok,
            gpu_reason=gpu_reason,
            mode=mode,
            budget_mb=budget_mb,
            override=overrides.get(c, {}),
            flag=flags.get(c, {}),
            notes=notes,
        )
        for c in COMPONENTS
    }
    return Plan(
        target=target,
        mode=mode,
        tier=gpu_tier,
        vram_limit_gb=vram_limit_gb,
        vram_budget_mb=budget_mb,
        components=components,
        notes=tuple(notes),
    )
