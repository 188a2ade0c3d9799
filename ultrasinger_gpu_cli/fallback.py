"""Automatic fallback: CUDA out of memory -> smaller batch -> CPU; the song finishes.

Each stage runs under a ladder taken from the plan (:func:`ladder`): the plan's settings, then
the batch halved down to 1, then the CPU with the resolver's CPU settings for that stage. On
an out-of-memory error the memory is freed and the next rung is tried; an error no batch size
fixes (no kernel image for this GPU, a CUDA driver error) goes to the CPU rung at once. Every
step is reported as a :class:`FallbackEvent`.

Tests drive the ladder by injecting errors: ``UGPU_INJECT_FAULTS="whisper:1:oom,demucs:2:kernel"``
raises, before attempt N of that stage, an out-of-memory error (``oom``) or a missing-kernel
error (``kernel``), exactly as torch would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ultrasinger_gpu_cli.engines.base import free_memory
from ultrasinger_gpu_cli.errors import EngineError, GpuUnavailableError

ENV_FAULTS = "UGPU_INJECT_FAULTS"
T = TypeVar("T")


@dataclass(frozen=True)
class Rung:
    settings: dict[str, Any]
    why: str

    @property
    def label(self) -> str:
        s = self.settings
        return f"{s.get('device')} batch {s.get('batch_size')}"


@dataclass(frozen=True)
class FallbackEvent:
    stage: str
    from_setting: str
    to_setting: str
    reason: str
    song: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "from": self.from_setting, "to": self.to_setting, "reason": self.reason,
                "song": self.song}  # fmt: skip


class StageFailed(EngineError):
    """The stage failed on every rung, or fallback was turned off."""


#: The smallest batch worth trying per stage before moving on (CREPE's batch counts frames).
FLOORS = {"whisper": 1, "demucs": 1, "crepe": 64}


def ladder(stage: str, plan_settings: dict[str, Any], cpu_settings: dict[str, Any]) -> list[Rung]:
    """The plan's settings, the batch halved down to the stage's floor, then (from CUDA) the CPU."""
    rungs = [Rung(dict(plan_settings), "the plan")]
    batch, floor = int(plan_settings.get("batch_size", 1)), FLOORS.get(stage, 1)
    while batch > floor:  # on the CPU too: host RAM can run out as well
        batch = max(floor, batch // 2)
        rungs.append(Rung({**plan_settings, "batch_size": batch}, "half the batch after out of memory"))
    if plan_settings.get("device") == "cuda":
        rungs.append(Rung(dict(cpu_settings), "the CPU, with the CPU plan's settings"))
    return rungs


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
    )


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


def _injected(stage: str, attempt: int) -> BaseException | None:
    for item in filter(None, (os.environ.get(ENV_FAULTS) or "").split(",")):
        name, _, rest = item.partition(":")
        number, _, kind = rest.partition(":")
        if name.strip() == stage and number.strip() == str(attempt):
            if kind.strip() == "kernel":
                return RuntimeError("CUDA error: no kernel image is available for execution on the device (injected)")
            try:
                import torch

                return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            except (ImportError, AttributeError):  # pragma: no cover
                return RuntimeError("CUDA out of memory (injected)")
    return None


def run_with_fallback(
    stage: str,
    rungs: list[Rung],
    attempt: Callable[[dict[str, Any]], T],
    *,
    enabled: bool = True,
    on_event: Callable[[FallbackEvent], None] = lambda e: None,
    song: str | None = None,
) -> tuple[T, dict[str, Any]]:
    """Run ``attempt(settings)`` down the ladder; returns the result and the settings that worked."""
    index = 0
    number = 0
    while True:
        rung = rungs[index]
        number += 1
        try:
            fault = _injected(stage, number)
            if fault is not None:
                raise fault
            return attempt(rung.settings), rung.settings
        except Exception as exc:
            oom, fatal = is_oom(exc), is_gpu_fatal(exc)
            if not (oom or fatal):
                raise
            reason = "out of memory" if oom else f"the GPU cannot run it ({str(exc).splitlines()[0][:120]})"
            if not enabled:
                raise StageFailed(
                    f"{stage} failed on {rung.label}: {reason}; fallback is off (--no-fallback)",
                    hint="run again without --no-fallback, or with --mode conservative / a lower --vram-limit",
                ) from exc
            free_memory()
            if fatal:  # no batch size fixes this: straight to the CPU rung
                nxt = next((i for i in range(index + 1, len(rungs)) if rungs[i].settings.get("device") == "cpu"
                            and rung.settings.get("device") != "cpu"), None)  # fmt: skip
            else:
                nxt = index + 1 if index + 1 < len(rungs) else None
            if nxt is None:
                raise StageFailed(f"{stage} failed on every rung of its fallback ladder: {reason}") from exc
            on_event(FallbackEvent(stage, rung.label, rungs[nxt].label, reason, song))
            index = nxt
