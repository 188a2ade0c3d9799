"""All NVML access of ugpu lives in this module.

* NVML (through ``nvidia-ml-py``, imported as ``pynvml``) is loaded and initialised lazily,
  once, under a lock, on the first query. Importing this module never touches the driver.
* Every per-field query goes through :meth:`Nvml._query`, which turns a field the driver does
  not support (or any other per-field NVML error) into ``None`` ("n/a" for people) instead of
  an exception. A GPU that fell off the bus raises :class:`GpuLostError` so the caller can
  mark that one GPU as lost and keep going with the others.
* No driver, no GPU or no ``pynvml``: :attr:`Nvml.available` is ``False`` and
  :attr:`Nvml.unavailable_reason` says why; nothing raises.
* Handles and static facts (name, UUID, total memory, compute capability, limits) are cached
  per GPU, so a sample of the dynamic fields costs a handful of NVML calls.

Tests replace the backend with a fake module that has the same function names
(:func:`use_backend`).
"""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ultrasinger_gpu_cli.errors import GpuLostError
from ultrasinger_gpu_cli.gpu.facts import GpuInfo, GpuProcess, GpuSample

_NVML_ERROR_GPU_IS_LOST = 15


@dataclass
class _Static:
    handle: Any
    name: str | None
    uuid: str | None
    pci_bus_id: str | None
    vram_total_mb: int | None
    compute_capability: str | None
    power_limit_w: float | None
    pcie_gen_max: int | None
    pcie_width_max: int | None


@dataclass
class _State:
    lib: ModuleType | None = None
    initialized: bool = False
    error: str | None = None
    static: dict[int, _Static] = field(default_factory=dict)


def _mb(value: int | None) -> int | None:
    return None if value is None else int(value) // (1024 * 1024)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_cuda_version(value: int | None) -> str | None:
    """NVML reports the driver's CUDA version as ``major * 1000 + minor * 10``."""
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


class Nvml:
    """A lazily initialised, thread-safe NVML session. One per process is enough."""

    def __init__(self, backend: ModuleType | None = None) -> None:
        self._backend = backend
        self._lock = threading.RLock()
        self._state = _State()

    # -- initialisation -------------------------------------------------------------------
    def _ensure(self) -> bool:
        with self._lock:
            state = self._state
            if state.initialized:
                return True
            if state.error is not None:
                return False
            try:
                lib = self._backend or importlib.import_module("pynvml")
            except ImportError:
                state.error = "nvidia-ml-py (pynvml) is not installed"
                return False
            try:
                lib.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError...
                state.error = _describe_init_error(lib, exc)
                return False
            state.lib = lib
            state.initialized = True
            return True

    @property
    def available(self) -> bool:
        """True when NVML loaded and initialised (a driver is present)."""
        return self._ensure()

    @property
    def unavailable_reason(self) -> str | None:
        self._ensure()
        return self._state.error

    def shutdown(self) -> None:
        with self._lock:
            if self._state.initialized and self._state.lib is not None:
                try:
                    self._state.lib.nvmlShutdown()
                except Exception:  # noqa: BLE001 - shutting down must never fail
                    pass
            self._state = _State()

    # -- the one safe query ----------------------------------------------------------------
    def _query(self, name: str, *args: Any) -> Any:
        """Call ``pynvml.<name>(*args)``; ``None`` for an unsupported field or missing function.

        Raises :class:`GpuLostError` when the driver says the GPU is gone.
        """
        lib = self._state.lib
        fn = getattr(lib, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - per-field isolation is the point
            if _is_gpu_lost(lib, exc):
                raise GpuLostError(f"GPU lost during {name}: {exc}") from exc
            return None

    # -- system-wide facts -----------------------------------------------------------------
    def driver_version(self) -> str | None:
        if not self._ensure():
            return None
        return _text(self._query("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> str | None:
        """The highest CUDA version the installed driver supports, e.g. ``"12.8"``."""
        if not self._ensure():
            return None
        value = self._query("nvmlSystemGetCudaDriverVersion_v2")
        if value is None:
            value = self._query("nvmlSystemGetCudaDriverVersion")
        return format_cuda_version(value)

    def device_count(self) -> int:
        if not self._ensure():
            return 0
        return int(self._query("nvmlDeviceGetCount") or 0)

    # -- per-GPU facts ---------------------------------------------------------------------
    def _static_facts(self, index: int) -> _Static:
        with self._lock:
            cached = self._state.static.get(index)
            if cached is not None:
                return cached
            handle = self._query("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                raise GpuLostError(f"GPU {index}: no NVML handle")
            memory = self._query("nvmlDeviceGetMemoryInfo", handle)
            cc = self._query("nvmlDeviceGetCudaComputeCapability", handle)
            limit_mw = self._query("nvmlDeviceGetPowerManagementLimit", handle)
            facts = _Static(
                handle=handle,
                name=_text(self._query("nvmlDeviceGetName", handle)),
                uuid=_text(self._query("nvmlDeviceGetUUID", handle)),
                pci_bus_id=_text(getattr(self._query("nvmlDeviceGetPciInfo", handle), "busId", None)),
                vram_total_mb=_mb(getattr(memory, "total", None)),
                compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
                power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
                pcie_gen_max=self._query("nvmlDeviceGetMaxPcieLinkGeneration", handle),
                pcie_width_max=self._query("nvmlDeviceGetMaxPcieLinkWidth", handle),
            )
            self._state.static[index] = facts
            return facts

    def gpu(self, index: int) -> GpuInfo:
        """Everything ``ugpu detect`` shows for one GPU; a lost GPU comes back with ``lost=True``."""
        if not self._ensure():
            raise GpuLostError(self._state.error or "NVML is not available")
        try:
            static = self._static_facts(index)
            sample = self._sample(index, static)
            return GpuInfo(
                index=index,
                name=static.name,
                uuid=static.uuid,
                pci_bus_id=static.pci_bus_id,
                vram_total_mb=static.vram_total_mb,
                vram_used_mb=sample.vram_used_mb,
                vram_free_mb=sample.vram_free_mb,
                compute_capability=static.compute_capability,
                temperature_c=sample.temperature_c,
                power_limit_w=static.power_limit_w,
                power_draw_w=sample.power_draw_w,
                utilization_gpu_percent=sample.utilization_gpu_percent,
                utilization_memory_percent=sample.utilization_memory_percent,
                pcie_gen=self._query("nvmlDeviceGetCurrPcieLinkGeneration", static.handle),
                pcie_gen_max=static.pcie_gen_max,
                pcie_width=self._query("nvmlDeviceGetCurrPcieLinkWidth", static.handle),
                pcie_width_max=static.pcie_width_max,
                clock_graphics_mhz=sample.clock_graphics_mhz,
                clock_memory_mhz=sample.clock_memory_mhz,
                fan_percent=self._query("nvmlDeviceGetFanSpeed", static.handle),
            )
        except GpuLostError as exc:
            cached = self._state.static.get(index)
            return GpuInfo(
                index=index,
                name=cached.name if cached else None,
                uuid=cached.uuid if cached else None,
                pci_bus_id=cached.pci_bus_id if cached else None,
                lost=True,
                error=str(exc),
            )

    def gpus(self) -> list[GpuInfo]:
        """Every GPU NVML sees, in index order. Empty without a driver."""
        return [self.gpu(i) for i in range(self.device_count())]

    def _sample(self, index: int, static: _Static) -> GpuSample:
        lib = self._state.lib
        handle = static.handle
        memory = self._query("nvmlDeviceGetMemoryInfo", handle)
        util = self._query("nvmlDeviceGetUtilizationRates", handle)
        temp = self._query("nvmlDeviceGetTemperature", handle, getattr(lib, "NVML_TEMPERATURE_GPU", 0))
        power_mw = self._query("nvmlDeviceGetPowerUsage", handle)
        return GpuSample(
            index=index,
            timestamp=time.time(),
            vram_used_mb=_mb(getattr(memory, "used", None)),
            vram_free_mb=_mb(getattr(memory, "free", None)),
            vram_total_mb=static.vram_total_mb,
            utilization_gpu_percent=getattr(util, "gpu", None),
            utilization_memory_percent=getattr(util, "memory", None),
            temperature_c=temp,
            power_draw_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=static.power_limit_w,
            clock_graphics_mhz=self._query("nvmlDeviceGetClockInfo", handle, getattr(lib, "NVML_CLOCK_GRAPHICS", 0)),
            clock_memory_mhz=self._query("nvmlDeviceGetClockInfo", handle, getattr(lib, "NVML_CLOCK_MEM", 2)),
            throttle_reasons=self._query("nvmlDeviceGetCurrentClocksEventReasons", handle),
        )

    def sample(self, index: int) -> GpuSample:
        """The dynamic fields of one GPU (a few NVML calls): what a monitor samples."""
        if not self._ensure():
            raise GpuLostError(self._state.error or "NVML is not available")
        try:
            return self._sample(index, self._static_facts(index))
        except GpuLostError as exc:
            return GpuSample(index=index, timestamp=time.time(), lost=True, error=str(exc))

    def processes(self, index: int) -> list[GpuProcess]:
        """Compute processes on one GPU with their memory; empty where unsupported."""
        if not self._ensure():
            return []
        try:
            static = self._static_facts(index)
            found = self._query("nvmlDeviceGetComputeRunningProcesses", static.handle) or []
        except GpuLostError:
            return []
        out = []
        for proc in found:
            used = getattr(proc, "usedGpuMemory", None)
            out.append(GpuProcess(pid=int(proc.pid), vram_used_mb=_mb(used) if isinstance(used, int) else None))
        return out


def _is_gpu_lost(lib: Any, exc: BaseException) -> bool:
    lost_cls = getattr(lib, "NVMLError_GpuIsLost", None)
    if lost_cls is not None and isinstance(exc, lost_cls):
        return True
    return getattr(exc, "value", None) == _NVML_ERROR_GPU_IS_LOST


def _describe_init_error(lib: Any, exc: BaseException) -> str:
    kind = type(exc).__name__
    if "LibraryNotFound" in kind:
        return "no NVIDIA driver found (the NVML library is not installed)"
    if "DriverNotLoaded" in kind:
        return "the NVIDIA driver is installed but not loaded"
    if "NoPermission" in kind:
        return "no permission to talk to the NVIDIA driver"
    return f"NVML failed to initialise: {exc}"


_default: Nvml | None = None
_default_lock = threading.Lock()


def get_nvml() -> Nvml:
    """The process-wide NVML session (created on first use, initialised on first query)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Nvml()
        return _default


def use_backend(backend: ModuleType | None) -> Nvml:
    """Replace the process-wide session with one over ``backend`` (tests use a fake pynvml)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.shutdown()
        _default = Nvml(backend)
        return _default


__all__ = ["Nvml", "get_nvml", "use_backend", "format_cuda_version"]
