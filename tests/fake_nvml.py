"""A fake ``pynvml`` module standing in for several cards.

It has the function names ugpu calls and raises the real ``pynvml`` exception classes,
so the code under test cannot tell it from the library except by the answers.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import pynvml

MiB = 1024 * 1024


@dataclass
class FakeCard:
    name: str
    uuid: str
    total_mb: int
    used_mb: int = 500
    cc: tuple[int, int] = (8, 6)
    temperature_c: int | None = 45
    power_limit_mw: int | None = 180_000
    power_usage_mw: int | None = 25_000
    util_gpu: int = 3
    util_mem: int = 1
    pcie: tuple[int, int, int, int] = (4, 16, 4, 16)  # gen, width, max gen, max width
    unsupported: set[str] = field(default_factory=set)  # NVML function names raising NotSupported
    lost_after_calls: int | None = None  # GPU falls off the bus after this many calls on it
    bus_id: str | None = None  # PCI bus id; by default from the card's position
    calls: int = 0


# The cards the issue names.
def rtx_5060_ti() -> FakeCard:
    return FakeCard("NVIDIA GeForce RTX 5060 Ti", "GPU-5060ti-0000", 16311, cc=(12, 0))


def h100() -> FakeCard:
    return FakeCard("NVIDIA H100 80GB HBM3", "GPU-h100-0000", 81559, cc=(9, 0), power_limit_mw=700_000)


def card_6gb_no_temp() -> FakeCard:
    return FakeCard(
        "NVIDIA GeForce RTX 2060", "GPU-2060-0000", 6144, cc=(7, 5), temperature_c=None,
        unsupported={"nvmlDeviceGetTemperature"},
    )  # fmt: skip


def lost_card() -> FakeCard:
    return FakeCard("NVIDIA GeForce RTX 3080", "GPU-3080-lost", 10240, lost_after_calls=2)


class _Memory:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


class _Pci:
    def __init__(self, bus_id: str) -> None:
        self.busId = bus_id


class _Util:
    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu, self.memory = gpu, memory


def make_fake_nvml(cards: list[FakeCard], *, driver: str = "575.51.03", cuda: int = 12090) -> types.ModuleType:
    """A module object with pynvml's names, backed by ``cards``."""
    mod = types.ModuleType("fake_pynvml")
    mod.NVMLError = pynvml.NVMLError
    mod.NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    mod.NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    mod.NVML_TEMPERATURE_GPU = 0
    mod.NVML_CLOCK_GRAPHICS = 0
    mod.NVML_CLOCK_MEM = 2
    mod.calls = []  # (function name, card index) for every call

    def on_card(fn_name: str, impl):
        def call(handle: int, *args: Any):
            card = cards[handle]
            mod.calls.append((fn_name, handle))
            card.calls += 1
            if card.lost_after_calls is not None and card.calls > card.lost_after_calls:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            if fn_name in card.unsupported:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return impl(card, *args)

        setattr(mod, fn_name, call)

    mod.nvmlInit = lambda: None
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(cards)
    mod.nvmlSystemGetDriverVersion = lambda: driver
    mod.nvmlSystemGetCudaDriverVersion = lambda: cuda

    def handle_by_index(index: int) -> int:
        if not 0 <= index < len(cards):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    mod.nvmlDeviceGetHandleByIndex = handle_by_index
    on_card("nvmlDeviceGetName", lambda c: c.name)
    on_card("nvmlDeviceGetUUID", lambda c: c.uuid)
    on_card("nvmlDeviceGetPciInfo", lambda c: _Pci(c.bus_id or f"00000000:{cards.index(c) + 1:02X}:00.0"))
    on_card("nvmlDeviceGetMemoryInfo", lambda c: _Memory(c.total_mb * MiB, c.used_mb * MiB))
    on_card("nvmlDeviceGetCudaComputeCapability", lambda c: c.cc)
    on_card("nvmlDeviceGetTemperature", lambda c, sensor: c.temperature_c)
    on_card("nvmlDeviceGetPowerManagementLimit", lambda c: c.power_limit_mw)
    on_card("nvmlDeviceGetPowerUsage", lambda c: c.power_usage_mw)
    on_card("nvmlDeviceGetUtilizationRates", lambda c: _Util(c.util_gpu, c.util_mem))
    on_card("nvmlDeviceGetCurrPcieLinkGeneration", lambda c: c.pcie[0])
    on_card("nvmlDeviceGetCurrPcieLinkWidth", lambda c: c.pcie[1])
    on_card("nvmlDeviceGetMaxPcieLinkGeneration", lambda c: c.pcie[2])
    on_card("nvmlDeviceGetMaxPcieLinkWidth", lambda c: c.pcie[3])
    on_card("nvmlDeviceGetClockInfo", lambda c, kind: 2400 if kind == 0 else 14000)
    on_card("nvmlDeviceGetFanSpeed", lambda c: 30)
    on_card("nvmlDeviceGetCurrentClocksEventReasons", lambda c: 0)
    on_card("nvmlDeviceGetComputeRunningProcesses", lambda c: [])
    return mod
