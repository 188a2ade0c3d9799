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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ultrasinger_gpu_cli.components import COMPONENTS, SPECS, ComponentSpec, ParameterValues, SettingValue, StageSettings
from ultrasinger_gpu_cli.components import spec as component_spec
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity, nominal_gb, sm_name
from ultrasinger_gpu_cli.plan.tiers import CPU_TIER, CUDA_CONTEXT_MB, MIN_USABLE_GPU_MB, MODE_TABLE, MODES, Tier, tier_for_vram

SOURCES = ("tier", "mode", "hardware", "override", "flag")
_LABELS = {"override": "a stored override", "flag": "a flag"}
#: Settings by component (stored overrides, flags).
ComponentValues = Mapping[str, Mapping[str, Any]]


def validate_setting(component: str, parameter: str, value: Any) -> SettingValue:
    """Check and normalise one user-supplied value; raise :class:`InvalidSettingError`."""
    return component_spec(component).parameter(parameter).validate(value)


def validate_settings(settings: ComponentValues | None) -> dict[str, ParameterValues]:
    """Validate a ``{component: {parameter: value}}`` mapping; ``None`` values are dropped."""
    out: dict[str, ParameterValues] = {}
    for component, params in (settings or {}).items():
        clean = component_spec(component).validate(params)
        if clean:
            out[component] = clean
    return out


def validate_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidSettingError(f"invalid mode {mode!r}; valid choices: {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class PlanTarget:
    """The machine a plan is for: a detected GPU, a hypothetical one, or the CPU."""

    name: str
    vram_total_mb: int | None = None
    compute_capability: str | None = None
    gpu: GpuIdentity | None = None  # None for the CPU and for hypothetical cards
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

    @property
    def settings_key(self) -> str | None:
        """Whose stored overrides apply: the GPU's UUID, ``"cpu"``, or None (a hypothetical card)."""
        if self.hypothetical:
            return None
        if self.gpu is not None:
            return self.gpu.uuid or f"gpu-index-{self.gpu.index}"
        return "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu_index": None if self.gpu is None else self.gpu.index,
            "gpu_id": None if self.gpu is None else self.gpu.uuid,
            "vram_total_mb": self.vram_total_mb,
            "vram_total_gb": self.vram_total_gb,
            "compute_capability": self.compute_capability,
            "sm": sm_name(self.compute_capability),
            "torch_can_run": self.torch_can_run,
            "hypothetical": self.hypothetical,
        }


CPU_TARGET = PlanTarget("CPU")


@dataclass(frozen=True)
class Setting:
    value: SettingValue
    reason: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "source": self.source}


@dataclass(frozen=True)
class ComponentPlan:
    component: str
    settings: dict[str, Setting]  # in the spec's parameter order
    estimated_vram_mb: int | None  # None on the CPU

    @property
    def spec(self) -> ComponentSpec:
        return SPECS[self.component]

    def value(self, parameter: str) -> SettingValue:
        return self.settings[parameter].value

    def values(self) -> ParameterValues:
        return {name: s.value for name, s in self.settings.items()}

    def typed(self) -> StageSettings:
        """The settings as the component's frozen dataclass (what engines take)."""
        return self.spec.settings(self.values())

    @property
    def device(self) -> str:
        return str(self.value("device"))

    @property
    def model(self) -> str:
        return str(self.value("model"))

    @property
    def weights_mb(self) -> int:
        """Its loaded model's weights (held from song to song), as the spec estimates them."""
        return self.spec.estimate_weights_mb(self.typed())

    @property
    def working_mb(self) -> int:
        """What one run needs beside the weights and the CUDA context: the same tensors on a card
        or in the host's memory."""
        return max(0, self.spec.estimate_vram_mb(self.typed()) - CUDA_CONTEXT_MB - self.weights_mb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {name: s.to_dict() for name, s in self.settings.items()},
            "estimated_vram_mb": self.estimated_vram_mb,
        }


@dataclass(frozen=True)
class Ahead:
    """Whether a batch separates its next song while the current song's later stages run (the
    next song's Demucs beside this song's Whisper and pitch, on the same card), and why."""

    enabled: bool
    peak_mb: int | None  # the estimated VRAM with both at work; None where Demucs is not on the card
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "estimated_peak_mb": self.peak_mb, "why": self.why}


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

    @property
    def uses_gpu(self) -> bool:
        return any(c.device == "cuda" for c in self.components.values())

    @property
    def pipeline_peak_mb(self) -> int | None:
        """The VRAM one worker's pipeline may hold: a worker keeps every stage's model loaded from
        song to song, so the stages' estimates add up (the CUDA context counted once).
        Conservative: two stages never run at once in one worker."""
        peaks = [c.estimated_vram_mb for c in self.components.values() if c.estimated_vram_mb and c.value("device") == "cuda"]
        return sum(peaks) - CUDA_CONTEXT_MB * (len(peaks) - 1) if peaks else None

    @property
    def ahead(self) -> Ahead:
        """Separate the next song ahead where the VRAM budget holds it: every stage's model
        loaded (a worker keeps them from song to song), Demucs' working memory and the largest
        working memory of the stages beside it, all at once (the CUDA context counted once). Never
        where the plan runs on the CPU (a batch there runs in lanes: :mod:`.lanes`), nor where
        Demucs alone does (it takes every core)."""
        demucs = self.components.get("demucs")
        if not self.uses_gpu:
            return Ahead(False, None, "the plan runs on the CPU: a batch converts several songs at once instead, each "
                                      "on a share of the cores (ugpu optimize shows how many)")  # fmt: skip
        if demucs is None or demucs.device != "cuda" or demucs.estimated_vram_mb is None:
            return Ahead(False, None, "Demucs runs on the CPU here, where it takes every core: one song's stages at a time")
        backend = demucs.spec.ref(str(demucs.value("backend")))
        if not backend.deterministic:  # seeded per song, it would move the draws of the stage beside it
            return Ahead(False, None, f"the {backend.name} backend may draw random numbers, so its stage is seeded: "
                                      "it would move the draws of Whisper beside it; one song's stages at a time")  # fmt: skip
        on_card = {name: c for name, c in self.components.items() if c.device == "cuda" and c.estimated_vram_mb}
        beside = max((c.working_mb for name, c in on_card.items() if name != "demucs"), default=0)
        peak = CUDA_CONTEXT_MB + sum(c.weights_mb for c in on_card.values()) + demucs.working_mb + beside
        budget = self.vram_budget_mb or 0
        if peak > budget:
            return Ahead(False, peak, f"the next song's Demucs beside this song's stages would take an estimated {peak} MB, "
                                      f"over the {budget} MB VRAM budget: one stage at a time")  # fmt: skip
        return Ahead(True, peak, f"in a batch, the next song's Demucs runs beside this song's later stages: an estimated "
                                 f"{peak} MB of the {budget} MB VRAM budget")  # fmt: skip

    def optimization_applied(self) -> dict[str, dict[str, SettingValue]]:
        """The design's ``optimization_applied``: exactly its keys per component."""
        return {c: SPECS[c].api_values(self.components[c].values()) for c in COMPONENTS}

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
            "separate_ahead": self.ahead.to_dict(),
            "notes": list(self.notes),
        }


def _gpu_usable(target: PlanTarget) -> tuple[bool, str | None]:
    if not target.is_gpu or target.vram_total_mb is None:
        return False, "no usable NVIDIA GPU was detected"
    if target.vram_total_mb < MIN_USABLE_GPU_MB:
        return False, f"{target.name} has only {target.vram_total_mb} MB of VRAM, too little for these models"
    if target.torch_can_run is False and not target.hypothetical:
        return False, target.torch_reason or "the installed PyTorch cannot run this card"
    return True, None


class _Builder:
    """Accumulates one component's settings, each write recording reason and source."""

    def __init__(self, spec: ComponentSpec) -> None:
        self.spec = spec
        self.settings: dict[str, Setting] = {}

    def set(self, parameter: str, value: SettingValue, reason: str, source: str) -> None:
        self.settings[parameter] = Setting(value, reason, source)

    def value(self, parameter: str) -> SettingValue:
        return self.settings[parameter].value

    def user_set(self, parameter: str) -> bool:
        return parameter in self.settings and self.settings[parameter].source in ("override", "flag")

    def typed(self) -> StageSettings:
        return self.spec.settings_type(**{p: s.value for p, s in self.settings.items()})


def _plan_component(
    spec: ComponentSpec,
    *,
    target: PlanTarget,
    gpu_tier: Tier,
    gpu_ok: bool,
    gpu_reason: str | None,
    mode: str,
    budget_mb: int | None,
    override: ParameterValues,
    flag: ParameterValues,
    notes: list[str],
    cpu_source: str = "tier",
) -> ComponentPlan:
    b = _Builder(spec)
    component = spec.name

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

    b.set("backend", spec.default_backend, f"{spec.default_backend}, the default {spec.title} backend", "tier")
    if tier.key in spec.tier_backends:
        name, why = spec.tier_backends[tier.key]
        if not spec.ref(name).missing_requirements():
            b.set("backend", name, f"{tier.label} tier: {why}", "tier")
    for parameter, value in spec.tier_defaults[tier.key].items():
        reason = spec.tier_reason(parameter, value, tier) or tier.why
        b.set(parameter, value, f"{tier.label} tier: {reason}", "tier")

    # Mode: scale batches, and the chunk length where the mode sets one.
    m = MODE_TABLE[mode]
    if m.batch_factor != 1.0:
        base, most = int(b.value("batch_size")), int(spec.parameter("batch_size").high)
        scaled = max(1, int(base * m.batch_factor))
        capped = f"; {most}, the most {spec.title} takes" if scaled > most else ""
        b.set("batch_size", min(scaled, most), f"{mode}: {m.why} ({base} in the tier table{capped})", "mode")
    if spec.mode_chunk_parameter and m.demucs_chunk:
        b.set(spec.mode_chunk_parameter, m.demucs_chunk,
              f"{mode}: the longest chunk HTDemucs takes (7.8 s), fewest overlaps", "mode")  # fmt: skip

    # Precision follows the device and the card.
    p = spec.precision(on_gpu, target.compute_capability)
    b.set("compute_type", p.value, p.reason, p.source)

    for source, given in (("override", override), ("flag", flag)):
        for parameter, value in given.items():
            if parameter != "device":
                described = spec.parameter(parameter).describe(value)
                b.set(parameter, value, f"{described} set by {_LABELS[source]}", source)

    on_gpu = _apply_backend(b, override, flag, target.compute_capability, notes) == "cuda"
    if not on_gpu and b.value("compute_type") in ("float16", "int8_float16"):
        b.set("compute_type", "float32", "float16 was requested, but it does not run on the CPU", "hardware")
    if spec.hardware_limit is not None:
        limit = spec.hardware_limit(b.typed())
        if limit is not None:
            b.set(limit[0], limit[1], limit[2], "hardware")

    estimate = None
    if on_gpu and budget_mb:
        user_sized = any(b.user_set(p) for p in ("batch_size", "model", "device"))
        estimate, misfit = _fit(b, budget_mb, shrink=not user_sized)
        if misfit and not user_sized:
            notes.append(f"{component}: {misfit}; it runs on the CPU")
            return _plan_component(
                spec, target=target, gpu_tier=gpu_tier, gpu_ok=False, gpu_reason=misfit, mode=mode,
                budget_mb=budget_mb, override=override, flag=flag, notes=notes, cpu_source="hardware",
            )  # fmt: skip
        if misfit:
            notes.append(
                f"{component}: {misfit}; on out-of-memory the fallback ladder halves the batch, "
                "then moves the stage to the CPU"
            )
    ordered = {p: b.settings[p] for p in spec.parameter_names}
    return ComponentPlan(component, ordered, estimate)


def _apply_backend(b: _Builder, override: ParameterValues, flag: ParameterValues, compute_capability: str | None,
                   notes: list[str]) -> str:
    """What the chosen backend dictates: the devices it runs on (and the cards it can run), the
    models it runs (a model the user named that it cannot run is refused), the settings it fixes.
    Returns the device."""
    spec = b.spec
    backend = str(b.value("backend"))
    ref = spec.backends[backend]
    if b.user_set("backend"):
        spec.ref(backend).check_installed()  # refused now, with the install command
    else:
        # A tier's backend yields to the user's settings it cannot honour (a CREPE capacity or
        # step size set by a flag): the component's default backend runs them.
        wants = [p for p in ("model", "device", *ref.fixed) if b.user_set(p)]
        clash = next((p for p in wants if (p == "model" and b.value(p) not in spec.models_of(backend))
                      or (p == "device" and b.value(p) not in ref.devices)
                      or (p in ref.fixed and b.value(p) != ref.fixed[p][0])), None)  # fmt: skip
        if clash is not None and backend != spec.default_backend:
            source = b.settings[clash].source
            b.set("backend", spec.default_backend, f"{spec.default_backend}: the {clash} {b.value(clash)} set by "
                  f"{_LABELS[source]} is not one {backend} runs", source)  # fmt: skip
            backend, ref = spec.default_backend, spec.backends[spec.default_backend]
    moved: tuple[str, str] | None = None  # (device, why)
    if b.value("device") not in ref.devices:
        moved = ref.devices[0], f"{backend} runs on the {ref.devices[0]} only"
    elif b.value("device") == "cuda" and ref.gpu_problem is not None:
        problem = ref.gpu_problem(compute_capability)
        moved = ("cpu", f"{backend} runs on the CPU here: {problem}") if problem else None
    if moved is not None:
        if b.value("device") == "cuda":
            notes.append(f"{spec.name}: {moved[1]}")
        b.set("device", moved[0], moved[1], "hardware")
    models = spec.models_of(backend)
    if b.value("model") not in models:
        if "model" in override or "model" in flag:
            raise InvalidSettingError(f"the {backend} backend does not run the {spec.name} model {b.value('model')!r}; "
                                      f"its models: {', '.join(models)}")  # fmt: skip
        b.set("model", models[0], f"{backend} runs {'its own model' if len(models) == 1 else models[0]}", "tier")
    device = str(b.value("device"))
    if device in ref.precision and not b.user_set("compute_type"):
        chosen = ref.precision[device]
        value, why = chosen(compute_capability) if callable(chosen) else chosen
        b.set("compute_type", value, f"{backend}: {why}", "tier")
    elif b.value("compute_type") not in ref.compute_types:
        if b.user_set("compute_type"):
            raise InvalidSettingError(f"the {backend} backend does not run {b.value('compute_type')}; "
                                      f"its compute types: {', '.join(ref.compute_types)}")  # fmt: skip
        fallback = "float32" if device == "cpu" else "float16"
        b.set("compute_type", fallback, f"{backend} runs {fallback} here", "hardware")
    for parameter, (value, why) in ref.fixed.items():
        if b.user_set(parameter) and b.value(parameter) != value:
            raise InvalidSettingError(f"the {backend} backend fixes the {spec.name} {parameter} at {value} ({why}); "
                                      f"{b.value(parameter)} cannot be set with it")  # fmt: skip
        b.set(parameter, value, f"{backend}: {why}", "hardware")
    return str(b.value("device"))


def _fit(b: _Builder, budget_mb: int, *, shrink: bool) -> tuple[int, str | None]:
    """Make the stage fit the VRAM budget: halve the batch; at 1, take the next smaller model
    (where the component has a step-down list) with the batch it started with, and halve again.

    Settings the user sized (batch, model, device) are never shrunk: ``shrink`` is False.
    Returns the estimate and, when it still does not fit, why.
    """
    spec = b.spec
    need = spec.estimate_vram_mb(b.typed())
    if need <= budget_mb or not shrink:
        return need, (None if need <= budget_mb else f"an estimated {need} MB exceeds the {budget_mb} MB VRAM budget")
    start_batch, start_model = b.settings["batch_size"], b.settings["model"]
    steps = spec.step_down_models
    current = str(start_model.value)
    smaller = steps[steps.index(current) + 1 :] if current in steps else ()
    for model in (None, *smaller):
        if model is not None:
            b.set("model", model, f"{start_model.value} does not fit the {budget_mb} MB budget; {model} does", "hardware")
            b.settings["batch_size"] = start_batch
        while (need := spec.estimate_vram_mb(b.typed())) > budget_mb and int(b.value("batch_size")) > 1:
            batch = int(b.value("batch_size"))
            b.set("batch_size", batch // 2, f"halved from {batch}: {need} MB would exceed the {budget_mb} MB budget",
                  "hardware")  # fmt: skip
        if need <= budget_mb:
            return need, None
    return need, f"an estimated {need} MB exceeds the {budget_mb} MB VRAM budget"


def resolve(
    target: PlanTarget,
    mode: str = "balanced",
    vram_limit_gb: float | None = None,
    overrides: ComponentValues | None = None,
    flags: ComponentValues | None = None,
) -> Plan:
    """Plan every registered component for ``target``. Raises :class:`InvalidSettingError`."""
    mode = validate_mode(mode)
    if vram_limit_gb is not None:
        vram_limit_gb = validate_vram_gb("VRAM limit", vram_limit_gb)
    clean_overrides = validate_settings(overrides)
    clean_flags = validate_settings(flags)
    notes: list[str] = []

    gpu_ok, gpu_reason = _gpu_usable(target)
    budget_mb = None
    gpu_tier = CPU_TIER
    if gpu_ok:
        effective_gb: float = target.vram_total_gb
        effective_mb = float(target.vram_total_mb or 0)
        if vram_limit_gb is not None:
            if vram_limit_gb < effective_gb:
                effective_gb, effective_mb = vram_limit_gb, vram_limit_gb * 1024
                notes.append(f"VRAM limited to {vram_limit_gb:g} GB: planned as a {vram_limit_gb:g} GB card")
            else:
                notes.append(f"VRAM limit {vram_limit_gb:g} GB is not below the card's {effective_gb} GB")
        gpu_tier = tier_for_vram(int(effective_gb))
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
        name: _plan_component(
            spec, target=target, gpu_tier=gpu_tier, gpu_ok=gpu_ok, gpu_reason=gpu_reason, mode=mode,
            budget_mb=budget_mb, override=clean_overrides.get(name, {}), flag=clean_flags.get(name, {}), notes=notes,
        )  # fmt: skip
        for name, spec in SPECS.items()
    }
    return Plan(target, mode, gpu_tier, vram_limit_gb, budget_mb, components, tuple(notes))


#: The largest amount of VRAM any plan accepts (no card has more; a typo is refused).
MAX_VRAM_GB = 4096.0


def validate_vram_gb(label: str, value: Any) -> float:
    """A number of GB above 0 and at most :data:`MAX_VRAM_GB`: refuses inf, NaN, negatives."""
    import math

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= MAX_VRAM_GB):
        raise InvalidSettingError(f"invalid {label} {value!r}; it must be a number of GB above 0 and at most {MAX_VRAM_GB:g}")
    return number
