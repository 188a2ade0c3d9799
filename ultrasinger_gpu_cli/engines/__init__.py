"""The engines: one backend each, behind one interface (:class:`~.base.Engine`).

Heavy libraries (torch, whisper, demucs, torchcrepe) are imported inside the engines'
methods, never at import time of this package. Which engine runs a component is the
component registry's business (:mod:`ultrasinger_gpu_cli.components`).
"""

from __future__ import annotations

from pathlib import Path

from ultrasinger_gpu_cli.components import StageSettings, spec
from ultrasinger_gpu_cli.gpu.devices import DeviceBinding
from ultrasinger_gpu_cli.engines.base import Engine, Progress

__all__ = ["Engine", "Progress", "create"]


def create(component: str, settings: StageSettings, models_dir: Path | None = None,
           binding: DeviceBinding | None = None) -> Engine:  # fmt: skip
    """An engine of the settings' backend for ``component`` (not loaded yet)."""
    return spec(component).create(settings, models_dir, binding)
