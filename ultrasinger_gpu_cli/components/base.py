"""What a component is: its settings, parameters, tier defaults, memory model, fallback floor,
backends, model files and output writers, in one :class:`ComponentSpec`.

Core code: no torch, no Typer, no rich. Backends are named here by module path and imported
only when one is used (:meth:`BackendRef.load`), so listing and planning stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Union

from ultrasinger_gpu_cli.components.settings import ParameterValues, S, SettingValue, StageSettings
from ultrasinger_gpu_cli.errors import InvalidSettingError

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.gpu.devices import DeviceBinding
    from ultrasinger_gpu_cli.engines.base import Engine, Progress
    from ultrasinger_gpu_cli.weights.models import ModelStatus
    from ultrasinger_gpu_cli.plan.tiers import Tier


DEVICES = ("cuda", "cpu")
COMPUTE_TYPES = ("float16", "float32", "int8", "int8_float16")  # what any backend runs; each declares its own
TORCH_COMPUTE_TYPES = ("float16", "float32")




@dataclass(frozen=True)
class Parameter:
    """One user-settable parameter: how to validate it and how to describe its value."""

    name: str
    label: str  # in messages: "whisper model", "batch size"
    kind: str  # "choice", "int" or "float"
    choices: tuple[str, ...] = ()
    low: float = 0
    high: float = 0
    unit: str = ""  # "ms", "samples"
    aliases: Mapping[str, str] = field(default_factory=dict)
    dynamic_choices: Callable[[], tuple[str, ...]] | None = None  # backends: the registry's names

    def valid_choices(self) -> tuple[str, ...]:
        return self.dynamic_choices() if self.dynamic_choices is not None else self.choices

    def validate(self, value: Any) -> SettingValue:
        if self.kind == "choice":
            valid = self.valid_choices()
            if value not in valid and value not in self.aliases:
                raise InvalidSettingError(f"invalid {self.label} {value!r}; valid choices: {', '.join(valid)}")
            return self.aliases.get(value, value)
        if self.kind == "int":
            return _int_range(self.label, value, int(self.low), int(self.high))
        return _float_range(self.label, value, self.low, self.high)

    def describe(self, value: SettingValue) -> str:
        return f"{value} {self.unit}" if self.unit else str(value)


def _int_range(label: str, value: Any, low: int, high: int) -> int:
    message = f"invalid {label} {value!r}; it must be a whole number from {low} to {high}"
    if isinstance(value, bool):
        raise InvalidSettingError(message)
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidSettingError(message) from None
    if not low <= number <= high:
        raise InvalidSettingError(message)
    return number


def _float_range(label: str, value: Any, low: float, high: float) -> float:
    message = f"invalid {label} {value!r}; it must be a number from {low:g} to {high:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidSettingError(message) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidSettingError(message)
    return number


#: Every component's spec by name, registered as it is made: the choices a registry extends (the
#: backends, and the models they bring) are read from here when asked, not fixed at import.
REGISTERED: dict[str, ComponentSpec[Any]] = {}


def _registered_backends(component: str) -> Callable[[], tuple[str, ...]]:
    def names() -> tuple[str, ...]:
        return REGISTERED[component].backend_names()

    return names


def model_parameter(component: str, label: str, models: tuple[str, ...], **kwargs: Any) -> Parameter:
    """The ``model`` parameter: the component's own models, and those its backends bring."""

    def names() -> tuple[str, ...]:
        return REGISTERED[component].all_models()

    return Parameter("model", label, "choice", models, dynamic_choices=names, **kwargs)


def common_parameters(component: str, *, max_batch: int) -> tuple[Parameter, ...]:
    """The parameters every component has, in display order (the backend's choices: the registry's)."""
    return (
        Parameter("batch_size", "batch size", "int", low=1, high=max_batch),
        Parameter("compute_type", "compute type", "choice", COMPUTE_TYPES),
        Parameter("device", "device", "choice", DEVICES),
        Parameter("backend", f"{component} backend", "choice", dynamic_choices=_registered_backends(component)),
    )


# -- backends ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A way to run a component: an engine class and where its weights come from.

    Each backend module defines one ``BACKEND = Backend(...)``; a component registers the
    module in one line (:meth:`ComponentSpec.register`), which also says what it needs installed.
    """

    name: str
    engine: type[Engine]
    summary: str
    model_status: Callable[[str, Path | None], ModelStatus]
    pull: Callable[..., list[Path]] | None = None  # (status, models_dir, progress); None: ships with the package
    ships_with: str = ""  # where the weights come from when pull is None
    pull_offline: bool = False  # pull converts weights already here; it then takes download=False to fetch nothing

    def create(self, settings: StageSettings, models_dir: Path | None = None,
               binding: DeviceBinding | None = None) -> Engine:  # fmt: skip
        return self.engine(settings, models_dir, binding)


#: A backend's compute type on a device: (value, why), or a function of the card's compute capability giving it.
BackendPrecision = Union[tuple[str, str], Callable[[Union[str, None]], tuple[str, str]]]


@dataclass
class BackendRef:
    """A registered backend: its name, the module that defines ``BACKEND`` (or the object), and
    what planning must know without importing it: the modules it needs installed and the command
    that installs them, the models it runs (empty: the component's own), the devices it runs on,
    and settings it fixes ({parameter: (value, why)})."""

    name: str
    source: str | Backend
    requires: tuple[str, ...] = ()  # importable modules (looked up, never imported, to plan)
    install: str = ""  # the command that installs them
    models: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES
    fixed: Mapping[str, tuple[SettingValue, str]] = field(default_factory=dict)
    compute_types: tuple[str, ...] = TORCH_COMPUTE_TYPES
    precision: Mapping[str, BackendPrecision] = field(default_factory=dict)  # device -> (compute type, why)
    gpu_problem: Callable[[str | None], str | None] | None = None  # (compute capability) -> why it can't run it
    # Its engine draws no random numbers: the stage runner never seeds it, so it can run beside a
    # stage that draws some (Whisper's temperature fallback) without moving that stage's draws.
    # Not said: seeded per song, like any stage whose result may depend on a generator.
    deterministic: bool = False

    def missing_requirements(self) -> tuple[str, ...]:
        return tuple(m for m in self.requires if importlib.util.find_spec(m) is None)

    def check_installed(self) -> None:
        missing = self.missing_requirements()
        if missing:
            raise InvalidSettingError(
                f"the {self.name} backend needs {', '.join(missing)}, which is not installed",
                hint=self.install or f"pip install {' '.join(missing)}",
            )

    def load(self) -> Backend:
        if isinstance(self.source, Backend):
            return self.source
        module = importlib.import_module(self.source)
        backend = getattr(module, "BACKEND", None)
        if not isinstance(backend, Backend):
            raise TypeError(f"{self.source} defines no BACKEND")  # a programming error, not a user's
        self.source = backend
        return backend


# -- single-stage commands --------------------------------------------------------------------
@dataclass(frozen=True)
class StageOptions:
    """What ``ugpu whisper|demucs|crepe AUDIO`` takes besides the settings."""

    language: str | None = None  # whisper
    audio_format: str = "wav"  # demucs: wav or flac
    gate: bool = True  # crepe: compute pitch only where there is voice


@dataclass(frozen=True)
class StageOutputs:
    files: dict[str, Path]
    no_vocals_found: bool
    details: dict[str, SettingValue] = field(default_factory=dict)  # counts shown with the result


@dataclass(frozen=True)
class StageIO:
    """How a component runs on one file: the decode it needs, the call, the writers."""

    sample_rate: int
    channels: int
    call: Callable[[Engine, Any, Progress, StageOptions], Any]
    write: Callable[[Any, Path, str, StageOptions], StageOutputs]
    empty: Callable[[Any], bool] = lambda result: False  # the stage found no voice: nothing was computed
    outputs: Callable[[str, StageOptions], tuple[str, ...]] = lambda stem, options: ()  # the names write() uses


# -- the spec ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    value: str
    reason: str
    source: str  # "tier" or "hardware"


@dataclass(frozen=True)
class ComponentSpec(Generic[S]):
    """Everything ugpu knows about one component."""

    name: str
    title: str
    settings_type: type[S]
    parameters: tuple[Parameter, ...]  # in display order
    api_keys: tuple[tuple[str, str], ...]  # (the design's response key, parameter)
    batch_unit: str  # what one batch item is
    fallback_floor: int  # the smallest batch the ladder tries before the CPU
    tier_defaults: Mapping[str, Mapping[str, SettingValue]]  # tier key -> parameter -> value
    estimate_vram_mb: Callable[[S], int]  # peak VRAM of one stage, CUDA context included
    estimate_weights_mb: Callable[[S], int]  # of which the loaded model's weights (held between songs)
    tier_reason: Callable[[str, SettingValue, Tier], str | None]  # None: the tier's own note
    precision: Callable[[bool, str | None], Precision]  # (on a GPU, compute capability)
    io: StageIO
    backends: dict[str, BackendRef] = field(default_factory=dict)
    step_down_models: tuple[str, ...] = ()  # smaller models to try when the model doesn't fit
    mode_chunk_parameter: str | None = None  # the parameter a mode's chunk length sets (Demucs)
    hardware_limit: Callable[[S], tuple[str, SettingValue, str] | None] | None = None  # (parameter, value, why)
    table_columns: tuple[tuple[str, str, str], ...] = ()  # the README's tier table: (header, parameter, format)
    tier_backends: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # tier key -> (backend, why)

    def __post_init__(self) -> None:
        REGISTERED[self.name] = self

    # -- parameters -------------------------------------------------------------------------
    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise InvalidSettingError(
            f"{self.name} has no setting {name!r}; valid settings: {', '.join(p.name for p in self.parameters)}"
        )

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def validate(self, values: Mapping[str, Any]) -> ParameterValues:
        """Check and normalise user-given values; ``None`` values are dropped."""
        return {name: self.parameter(name).validate(v) for name, v in values.items() if v is not None}

    def settings(self, values: Mapping[str, SettingValue]) -> S:
        """The typed settings from a complete set of values (validated)."""
        names = {f.name for f in fields(self.settings_type)}
        missing = names - set(values)
        if missing:
            raise InvalidSettingError(f"{self.name}: settings missing: {', '.join(sorted(missing))}")
        clean = {n: self.parameter(n).validate(values[n]) for n in names}
        ref = self.backends.get(str(clean.get("backend")))
        if ref is not None and "compute_type" in clean and clean["compute_type"] not in ref.compute_types:
            raise InvalidSettingError(f"the {ref.name} backend does not run {clean['compute_type']}; "
                                      f"its compute types: {', '.join(ref.compute_types)}")  # fmt: skip
        if "backend" in clean and "model" in clean and clean["model"] not in self.models_of(str(clean["backend"])):
            raise InvalidSettingError(f"the {clean['backend']} backend does not run the {self.name} model "
                                      f"{clean['model']!r}; its models: {', '.join(self.models_of(str(clean['backend'])))}")  # fmt: skip
        return self.settings_type(**clean)

    def defaults(self, **values: SettingValue) -> S:
        """Typed settings for using an engine as a library: the CPU tier's defaults, the default
        backend, float32 on the CPU, with ``values`` on top (validated)."""
        on_gpu = values.get("device") == "cuda"
        base: dict[str, SettingValue] = {"backend": self.default_backend, "device": "cpu",
                                         "compute_type": self.precision(on_gpu, None).value, **self.tier_defaults["cpu"]}  # fmt: skip
        return self.settings({**base, **values})

    # -- backends ---------------------------------------------------------------------------
    def register(self, name: str, source: str | Backend, *, requires: tuple[str, ...] = (), install: str = "",
                 models: tuple[str, ...] = (),
                 devices: tuple[str, ...] = DEVICES, fixed: Mapping[str, tuple[SettingValue, str]] | None = None,
                 compute_types: tuple[str, ...] = TORCH_COMPUTE_TYPES,
                 precision: Mapping[str, BackendPrecision] | None = None,
                 gpu_problem: Callable[[str | None], str | None] | None = None,
                 deterministic: bool = False) -> None:  # fmt: skip
        """The one registration line of a backend (with what planning needs to know of it:
        ``gpu_problem(compute_capability)`` says why it cannot run a card, or None;
        ``deterministic``: its engine draws no random numbers)."""
        self.backends[name] = BackendRef(name, source, requires, install, models, devices, dict(fixed or {}),
                                         compute_types, dict(precision or {}), gpu_problem, deterministic)  # fmt: skip

    def models_of(self, backend: str) -> tuple[str, ...]:
        """The models a backend runs: its own, else the component's."""
        ref = self.backends.get(backend)
        return (ref.models if ref and ref.models else self.parameter("model").choices)

    def all_models(self) -> tuple[str, ...]:
        own = self.parameter("model").choices
        return own + tuple(m for ref in self.backends.values() for m in ref.models if m not in own)

    def backend_names(self) -> tuple[str, ...]:
        return tuple(self.backends)

    @property
    def default_backend(self) -> str:
        return next(iter(self.backends))

    def ref(self, name: str) -> BackendRef:
        """A registered backend as planning sees it (its module not imported)."""
        ref = self.backends.get(name)
        if ref is None:
            raise InvalidSettingError(
                f"invalid {self.name} backend {name!r}; valid choices: {', '.join(self.backends)}"
            )
        return ref

    def backend(self, name: str) -> Backend:
        return self.ref(name).load()

    def create(self, settings: S, models_dir: Path | None = None, binding: DeviceBinding | None = None) -> Engine:
        """An engine of the settings' backend (not loaded yet)."""
        return self.backend(settings.backend).create(settings, models_dir, binding)

    def model_status(self, settings: S, models_dir: Path | None) -> ModelStatus:
        return self.backend(settings.backend).model_status(settings.model, models_dir)

    def api_values(self, settings: Mapping[str, SettingValue]) -> dict[str, SettingValue]:
        return {key: settings[parameter] for key, parameter in self.api_keys}
