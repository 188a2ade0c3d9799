"""Which failures the fallback ladder handles: out of memory, a GPU that cannot run the stage
(no kernel image, a driver error), int8 refused by cuBLAS; and what loading a damaged weights
file raises; and the record of one step down the ladder (:class:`FallbackEvent`). Asked by the engines (a load error that is not the ladder's is a damaged file) and
by the ladder itself (:mod:`.fallback`); torch is imported only to ask about its own error type.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ultrasinger_gpu_cli.errors import GpuUnavailableError

if TYPE_CHECKING:
    from ultrasinger_gpu_cli.gpu.facts import GpuIdentity


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def is_int8_unsupported(exc: BaseException) -> bool:
    """cuBLAS refused an int8 GEMM on this card: float16 still runs."""
    return "cublas_status_not_supported" in str(exc).lower()


def is_gpu_fatal(exc: BaseException) -> bool:
    """Errors no batch size fixes: the card can't run this build, or the driver failed."""
    if isinstance(exc, GpuUnavailableError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, AssertionError)) and any(
        key in text
        for key in ("no kernel image", "cuda error", "cudnn_status", "cublas_status", "driver", "not compatible",
                    "torch not compiled with cuda")
    )  # fmt: skip


def fallback_worthy(exc: BaseException) -> bool:
    """An error the ladder handles (out of memory, a GPU that can't run it), not a damaged file."""
    return is_oom(exc) or is_gpu_fatal(exc)


#: What loading a damaged weights file raises (torch.load, pickle, zip, yaml...).
LOAD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
                                                AttributeError, IndexError, pickle.UnpicklingError, zipfile.BadZipFile)


@dataclass(frozen=True)
class FallbackEvent:
    """One step down the fallback ladder."""

    stage: str
    from_setting: str
    to_setting: str
    reason: str
    song: str | None = None
    device: str | None = None  # where the failed attempt ran ("cuda" or "cpu")
    gpu: GpuIdentity | None = None  # the card it failed on
    run_id: str | None = None  # the run it happened in

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "from": self.from_setting, "to": self.to_setting, "reason": self.reason,
                "song": self.song, "device": self.device,
                "gpu_index": None if self.gpu is None else self.gpu.index}  # fmt: skip
