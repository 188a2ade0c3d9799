"""Automatic fallback: CUDA out of memory -> smaller batch -> CPU; the song finishes.

Each stage runs under a ladder taken from the plan (:func:`ladder`): the plan's settings, then
the batch halved down to the component's floor (its spec's ``fallback_floor``), then the CPU
with the resolver's CPU settings for that stage. On an out-of-memory error the memory is freed
and the next rung is tried; an error no batch size fixes (no kernel image for this GPU, a CUDA
driver error) goes to the CPU rung at once. Every step is reported as a :class:`FallbackEvent`.
Pure logic: the stage runner (:mod:`.runner`) supplies the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ultrasinger_gpu_cli.components import StageSettings, spec
from ultrasinger_gpu_cli.gpu.devices import free_memory
from ultrasinger_gpu_cli.errors import EngineError
from ultrasinger_gpu_cli.failures import is_gpu_fatal, is_int8_unsupported, is_oom
from ultrasinger_gpu_cli.failures import FallbackEvent

T = TypeVar("T")
S = TypeVar("S", bound=StageSettings)


#: Compute types that use cuBLAS's int8 GEMMs, and what to run where cuBLAS refuses them.
INT8_ON_CUDA = {"int8_float16": "float16", "int8": "float16", "int8_float32": "float32"}


@dataclass(frozen=True)
class Rung(Generic[S]):
    settings: S
    why: str
    unsupported_only: bool = False  # taken only when the GPU refuses the compute type, never on out of memory

    @property
    def label(self) -> str:
        named = self.settings.device == "cuda" and (self.settings.compute_type in INT8_ON_CUDA or self.unsupported_only)
        return f"{self.settings.label} {self.settings.compute_type}" if named else self.settings.label


class StageFailed(EngineError):
    """The stage failed on every rung, or fallback was turned off."""


def ladder(stage: str, plan_settings: S, cpu_settings: S) -> list[Rung[S]]:
    """The plan's settings, the batch halved down to the stage's floor, then (from CUDA) the CPU.
    A plan with int8 on CUDA has a precision step first, taken only where cuBLAS refuses int8
    (``CUBLAS_STATUS_NOT_SUPPORTED``, seen on Blackwell): the same batch in float16."""
    rungs = [Rung(plan_settings, "the plan")]
    if plan_settings.device == "cuda" and plan_settings.compute_type in INT8_ON_CUDA:
        wider = INT8_ON_CUDA[plan_settings.compute_type]
        rungs.append(Rung(plan_settings.but(compute_type=wider),
                          f"{wider} if cuBLAS refuses {plan_settings.compute_type} (CUBLAS_STATUS_NOT_SUPPORTED)", True))  # fmt: skip
    batch, floor = plan_settings.batch_size, spec(stage).fallback_floor
    while batch > floor:  # on the CPU too: host RAM can run out as well
        batch = max(floor, batch // 2)
        rungs.append(Rung(plan_settings.but(batch_size=batch), "half the batch after out of memory"))
    if plan_settings.device == "cuda":
        rungs.append(Rung(cpu_settings, "the CPU, with the CPU plan's settings"))
    return rungs


def run_with_fallback(
    stage: str,
    rungs: list[Rung[S]],
    attempt: Callable[[S], T],
    *,
    enabled: bool = True,
    on_event: Callable[[FallbackEvent], None] = lambda e: None,
    song: str | None = None,
) -> tuple[T, S]:
    """Run ``attempt(settings)`` down the ladder; returns the result and the settings that worked."""
    index = 0
    while True:
        rung = rungs[index]
        try:
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
            later = range(index + 1, len(rungs))
            step = next((i for i in later if rungs[i].unsupported_only), None) if is_int8_unsupported(exc) else None
            if step is not None:  # the precision step; the batch rungs after it run its compute type too
                wider = rungs[step].settings.compute_type
                rungs = rungs[: step + 1] + [Rung(r.settings.but(compute_type=wider), r.why)
                                             if r.settings.device == "cuda" else r for r in rungs[step + 1 :]]  # fmt: skip
                nxt: int | None = step
            elif fatal:  # no batch size fixes this: straight to the CPU rung
                nxt = next((i for i in later if rungs[i].settings.device == "cpu" and rung.settings.device != "cpu"), None)
            else:
                nxt = next((i for i in later if not rungs[i].unsupported_only), None)
            if nxt is None:
                raise StageFailed(f"{stage} failed on every rung of its fallback ladder: {reason}") from exc
            on_event(FallbackEvent(stage, rung.label, rungs[nxt].label, reason, song, rung.settings.device))
            index = nxt
