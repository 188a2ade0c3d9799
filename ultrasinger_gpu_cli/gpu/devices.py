"""Device binding: the GPU the user named, as PyTorch numbers it; and every ``torch.cuda`` call.

NVML numbers GPUs in PCI order; CUDA numbers them "fastest first" unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and ``CUDA_VISIBLE_DEVICES`` hides and renumbers them.
So the NVML index of ``--gpu 1`` says nothing about its CUDA ordinal. :func:`bind` finds the
ordinal by the card's UUID (PyTorch reports it per device) or, failing that, by its PCI bus
id, never by position. The engines load on ``cuda:<ordinal>``; the VRAM cap, the peak-memory
counters and the NVML sampler all use the same binding.

torch is imported inside the functions: importing this module is free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ultrasinger_gpu_cli.errors import GpuUnavailableError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity


@dataclass(frozen=True)
class CudaDevice:
    """One device as PyTorch lists it."""

    ordinal: int
    uuid: str | None
    pci_bus_id: str | None
    name: str | None = None


@dataclass(frozen=True)
class DeviceBinding:
    """Where a stage runs: the CPU, or one CUDA ordinal bound to one NVML GPU."""

    kind: str  # "cpu" or "cuda"
    ordinal: int | None = None
    gpu: GpuIdentity | None = None  # None on the CPU, and for the library default cuda device

    @classmethod
    def cpu(cls) -> DeviceBinding:
        return cls("cpu")

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def name(self) -> str:
        """``"cpu"`` or ``"cuda:N"``: what ``torch.device`` takes."""
        return f"cuda:{self.ordinal}" if self.is_cuda and self.ordinal is not None else self.kind

    @property
    def nvml_index(self) -> int | None:
        """The GPU the NVML sampler watches (the same card as :attr:`ordinal`)."""
        return self.gpu.index if self.is_cuda and self.gpu is not None else None

    def torch_device(self):
        import torch

        if self.is_cuda and not torch.cuda.is_available():
            raise GpuUnavailableError("the plan says cuda, but PyTorch sees no usable GPU", hint="run `ugpu detect`")
        return torch.device(self.name)


def normalise_uuid(uuid: str | None) -> str | None:
    """NVML says ``GPU-5b8d...``; PyTorch's device properties say ``5b8d...``."""
    if not uuid:
        return None
    text = str(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return text or None


def normalise_pci(bus_id: str | None) -> tuple[int, int, int] | None:
    """``00000000:01:00.0`` (NVML) or ``0000:01:00.0`` -> (domain, bus, device)."""
    if not bus_id:
        return None
    try:
        domain, bus, rest = str(bus_id).strip().split(":")
        return int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
    except ValueError:
        return None


def torch_cuda_devices() -> list[CudaDevice]:
    """The devices PyTorch can see, with their UUIDs and PCI addresses."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for ordinal in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(ordinal)
        uuid = getattr(props, "uuid", None)
        bus = getattr(props, "pci_bus_id", None)
        pci = None
        if isinstance(bus, int):
            pci = f"{int(getattr(props, 'pci_domain_id', 0)):04x}:{bus:02x}:{int(getattr(props, 'pci_device_id', 0)):02x}.0"
        out.append(CudaDevice(ordinal, None if uuid is None else str(uuid), pci, getattr(props, "name", None)))
    return out


def cuda_ordinal(gpu: GpuIdentity, devices: list[CudaDevice]) -> int:
    """The CUDA ordinal of ``gpu``: by UUID, else by PCI bus id. Raises GpuUnavailableError."""
    uuid = normalise_uuid(gpu.uuid)
    if uuid is not None:
        for device in devices:
            if normalise_uuid(device.uuid) == uuid:
                return device.ordinal
    pci = normalise_pci(gpu.pci_bus_id)
    if pci is not None:
        for device in devices:
            if normalise_pci(device.pci_bus_id) == pci:
                return device.ordinal
    seen = ", ".join(f"cuda:{d.ordinal} {d.uuid or '?'}" for d in devices) or "none"
    raise GpuUnavailableError(
        f"GPU {gpu.index} ({gpu.name or 'unknown'}, {gpu.uuid or 'no UUID'}) is not among the devices PyTorch sees ({seen})",
        hint="check CUDA_VISIBLE_DEVICES, or run `ugpu detect`",
    )


def bind(gpu: GpuIdentity | None) -> DeviceBinding:
    """Bind a stage to ``gpu`` (the CUDA ordinal found by UUID); ``None`` is torch's current device."""
    import torch

    if not torch.cuda.is_available():
        raise GpuUnavailableError("the plan says cuda, but PyTorch sees no usable GPU", hint="run `ugpu detect`")
    if gpu is None:
        return DeviceBinding("cuda", torch.cuda.current_device(), None)
    return DeviceBinding("cuda", cuda_ordinal(gpu, torch_cuda_devices()), gpu)


def cap_memory(binding: DeviceBinding, fraction: float | None) -> None:
    """Never let this process take more than ``fraction`` of the bound card's VRAM."""
    if not binding.is_cuda or not fraction:
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(fraction, binding.ordinal)


def start_measuring(binding: DeviceBinding) -> None:
    """Reset the peak-memory counter of the bound card before a stage."""
    if not binding.is_cuda:
        return
    import torch

    torch.cuda.synchronize(binding.ordinal)
    torch.cuda.reset_peak_memory_stats(binding.ordinal)


def peak_vram_mb(binding: DeviceBinding) -> int | None:
    """The peak memory PyTorch allocated on the bound card since :func:`start_measuring`."""
    if not binding.is_cuda:
        return None
    import torch

    torch.cuda.synchronize(binding.ordinal)
    return int(torch.cuda.max_memory_allocated(binding.ordinal) // (1024 * 1024))


def side_stream(binding: DeviceBinding):
    """A CUDA stream of its own on the bound card (None on the CPU), for a stage that runs beside
    another: each thread queues on PyTorch's default stream unless told otherwise, and work on one
    stream runs in order, so two stages there would take turns, not share the card."""
    if not binding.is_cuda:
        return None
    import torch

    return torch.cuda.Stream(device=binding.ordinal)


@contextmanager
def on_stream(stream: Any, binding: DeviceBinding) -> Iterator[None]:
    """This thread's CUDA work on ``stream`` (from :func:`side_stream`; None: as it was). It
    starts after what the card's default stream has queued (the model it uses loaded there), and
    is finished when the block ends, so its results are ready for whoever reads them next."""
    if stream is None:
        yield
        return
    import torch

    stream.wait_stream(torch.cuda.default_stream(binding.ordinal))
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        stream.synchronize()


def free_memory(*, collect: bool = True) -> None:
    """Collect garbage (``collect``: what dropped models and failed attempts still hold in
    reference cycles), then hand the CUDA memory torch caches back to the driver where this
    process has used a card. torch is never imported for it: a process that has not imported
    torch has no memory of torch's to give back (a ``--timings`` run on SwiftF0 imports no
    torch, and pays no second for it at the end)."""
    import gc

    if collect:
        gc.collect()
    torch = imported("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def imported(name: str) -> ModuleType | None:
    """The module ``name`` where this process has imported it, else None (never imported for the
    asking). One that another thread is importing at this moment (a server's workers load their
    engines at once) is waited for, as ``import`` waits: ``sys.modules`` holds it half initialized
    meanwhile ("partially initialized module 'torch' has no attribute 'manual_seed'", seen)."""
    import importlib
    import sys

    return importlib.import_module(name) if name in sys.modules else None


def cpu_threads() -> int:
    """The CPU threads this process's engines may use: ``OMP_NUM_THREADS`` where it is set (a
    batch lane's share of the cores, or the user's own limit), else the physical cores (the
    libraries' defaults of 4 or every logical core oversubscribe small machines)."""
    import os

    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def use_cpu_threads(threads: int) -> None:
    """This process's engines take ``threads`` CPU threads: ``OMP_NUM_THREADS`` (and MKL's) for
    the libraries that read it when they load (faster-whisper, SwiftF0 and TensorFlow through
    :func:`cpu_threads`, PyTorch on import), and PyTorch told where it is loaded already (never
    imported for it: a process whose engines need no torch pays nothing)."""
    import os

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = imported("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def share_cores(ways: int) -> int:
    """This process's engines' CPU threads when ``ways`` songs are converted at once in it (a
    server's CPU workers): the cores shared out, unless ``OMP_NUM_THREADS`` is already set (the
    user's, or a lane's)."""
    import os

    given = os.environ.get("OMP_NUM_THREADS", "").strip().isdigit()
    use_cpu_threads(cpu_threads() if given else max(1, cpu_threads() // max(1, ways)))
    return cpu_threads()
