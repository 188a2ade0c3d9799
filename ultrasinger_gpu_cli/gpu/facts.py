"""Typed value objects for what ugpu knows about a machine. Units are in the field names.

``None`` means "not available" (the driver does not report it, or it does not apply);
people see it as ``n/a``, JSON as ``null``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def nominal_gb(vram_mb: int | float | None) -> int:
    """A card's marketed size in whole GB: a "16 GB" card reports about 15.9 GiB."""
    if not vram_mb:
        return 0
    return int(round(vram_mb / 1024))


def sm_name(compute_capability: str | None) -> str | None:
    """``"12.0"`` -> ``"sm_120"``."""
    if not compute_capability:
        return None
    major, _, minor = compute_capability.partition(".")
    return f"sm_{major}{minor or '0'}"


@dataclass(frozen=True)
class GpuSummary:
    """What the NVML sampler saw on the stage's card while it ran (``None``: n/a)."""

    samples: int = 0
    peak_vram_used_mb: int | None = None
    mean_utilization_percent: float | None = None
    max_temperature_c: int | None = None


@dataclass(frozen=True)
class GpuIdentity:
    """Which GPU: the one identity every module uses (NVML index, UUID, PCI bus id, name).

    ``index`` is NVML's order, which is PCI order; CUDA numbers the same cards "fastest
    first" unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. :mod:`.devices` maps an identity to the
    CUDA ordinal by UUID (or PCI bus id), never by position.
    """

    index: int
    uuid: str | None = None
    pci_bus_id: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"GPU {self.index}"


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it at detection time."""

    index: int
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    vram_total_mb: int | None = None
    vram_used_mb: int | None = None
    vram_free_mb: int | None = None
    compute_capability: str | None = None
    temperature_c: int | None = None
    power_limit_w: float | None = None
    power_draw_w: float | None = None
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    clock_graphics_mhz: int | None = None
    clock_memory_mhz: int | None = None
    fan_percent: int | None = None
    lost: bool = False
    error: str | None = None

    @property
    def vram_total_gb(self) -> int:
        return nominal_gb(self.vram_total_mb)

    @property
    def sm(self) -> str | None:
        return sm_name(self.compute_capability)

    @property
    def identity(self) -> GpuIdentity:
        return GpuIdentity(self.index, self.uuid, self.pci_bus_id, self.name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["vram_total_gb"] = self.vram_total_gb
        data["sm"] = self.sm
        return data


@dataclass(frozen=True)
class GpuSample:
    """The dynamic fields of one GPU at one instant (what a monitor samples)."""

    index: int
    timestamp: float
    vram_used_mb: int | None = None
    vram_free_mb: int | None = None
    vram_total_mb: int | None = None
    utilization_gpu_percent: int | None = None
    utilization_memory_percent: int | None = None
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    clock_graphics_mhz: int | None = None
    clock_memory_mhz: int | None = None
    throttle_reasons: int | None = None
    lost: bool = False
    error: str | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    vram_used_mb: int | None = None


@dataclass(frozen=True)
class HostInfo:
    """The CPU side of the machine: what ugpu runs on when there is no usable GPU."""

    cpu_model: str
    cpu_cores_physical: int | None
    cpu_cores_logical: int | None
    ram_total_mb: int | None
    os: str
    python_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TorchInfo:
    installed: bool
    version: str | None = None
    cuda_build: str | None = None  # torch.version.cuda; None for a CPU-only build
    cuda_available: bool = False
    device_count: int = 0
    arch_list: tuple[str, ...] = ()
    error: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_list"] = list(self.arch_list)
        data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True)
class TensorflowInfo:
    installed: bool
    version: str | None = None
    gpus: tuple[str, ...] = ()
    cuda_compute_capabilities: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = list(self.gpus)
        data["cuda_compute_capabilities"] = list(self.cuda_compute_capabilities)
        return data


@dataclass(frozen=True)
class FrameworkInfo:
    torch: TorchInfo
    tensorflow: TensorflowInfo
    probed_at: float = 0.0
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "torch": self.torch.to_dict(),
            "tensorflow": self.tensorflow.to_dict(),
            "probed_at": self.probed_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, from_cache: bool = False) -> FrameworkInfo:
        t = dict(data["torch"])
        t["arch_list"] = tuple(t.get("arch_list") or ())
        t["warnings"] = tuple(t.get("warnings") or ())
        tf = dict(data["tensorflow"])
        tf["gpus"] = tuple(tf.get("gpus") or ())
        tf["cuda_compute_capabilities"] = tuple(tf.get("cuda_compute_capabilities") or ())
        return cls(
            torch=TorchInfo(**t),
            tensorflow=TensorflowInfo(**tf),
            probed_at=float(data.get("probed_at") or 0.0),
            from_cache=from_cache,
        )


@dataclass(frozen=True)
class GpuCompatibility:
    """Can the installed PyTorch run this card, and if not, what fixes it."""

    gpu_index: int
    sm: str | None
    torch_can_run: bool | None  # None: unknown (torch missing, or no compute capability)
    reason: str
    fix_command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Detection:
    """The result of ``ugpu detect``: GPUs, host, frameworks and what ugpu makes of them."""

    gpus: tuple[GpuInfo, ...]
    host: HostInfo
    frameworks: FrameworkInfo
    compatibility: tuple[GpuCompatibility, ...]
    driver_version: str | None
    cuda_driver_version: str | None
    nvml_error: str | None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usable_gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(g for g in self.gpus if not g.lost)

    @property
    def gpu_detected(self) -> bool:
        return bool(self.usable_gpus)

    def compatibility_of(self, index: int) -> GpuCompatibility | None:
        for item in self.compatibility:
            if item.gpu_index == index:
                return item
        return None
