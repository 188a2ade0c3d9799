"""Rehearsing the fallback ladder without a GPU: ``--rehearse-fault STAGE:ATTEMPT:KIND``.

A documented diagnostic, not a test seam: it raises, before attempt ATTEMPT of STAGE, the
error a GPU would (``oom``: ``torch.cuda.OutOfMemoryError``; ``kernel``: "no kernel image is
available"), so a user can watch the ladder halve the batch or move the stage to the CPU on
any machine. It wraps the engine the runner created; the ladder itself has no knowledge of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ultrasinger_gpu_cli.components import COMPONENTS
from ultrasinger_gpu_cli.engines.base import Engine
from ultrasinger_gpu_cli.errors import InvalidSettingError

KINDS = ("oom", "kernel")


@dataclass(frozen=True)
class Fault:
    stage: str
    attempt: int
    kind: str

    @classmethod
    def parse(cls, text: str) -> Fault:
        stage, _, rest = text.partition(":")
        attempt, _, kind = rest.partition(":")
        stage, attempt, kind = stage.strip(), attempt.strip(), (kind.strip() or "oom")
        if stage not in COMPONENTS or not attempt.isdigit() or int(attempt) < 1 or kind not in KINDS:
            raise InvalidSettingError(
                f"invalid --rehearse-fault {text!r}; write STAGE:ATTEMPT[:KIND] with STAGE one of "
                f"{', '.join(COMPONENTS)}, ATTEMPT from 1, KIND one of {', '.join(KINDS)} (e.g. crepe:1:oom)"
            )
        return cls(stage, int(attempt), kind)

    def error(self) -> BaseException:
        if self.kind == "kernel":
            return RuntimeError("CUDA error: no kernel image is available for execution on the device (rehearsal)")
        try:
            import torch

            return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (rehearsal)")
        except (ImportError, AttributeError):  # pragma: no cover
            return RuntimeError("CUDA out of memory (rehearsal)")


@dataclass
class Rehearsal:
    """The faults to raise, and how many attempts each stage has made so far."""

    faults: tuple[Fault, ...] = ()
    attempts: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def before_attempt(self, stage: str) -> None:
        number = self.attempts.get(stage, 0) + 1
        self.attempts[stage] = number
        for fault in self.faults:
            if fault.stage == stage and fault.attempt == number:
                raise fault.error()


class RehearsalEngine(Engine):
    """Wraps a real engine: each ``run`` counts as an attempt and may raise a rehearsed fault."""

    def __init__(self, inner: Engine, stage: str, rehearsal: Rehearsal) -> None:
        super().__init__(inner.settings, inner.models_dir, inner.binding)
        self.inner, self.stage, self.rehearsal = inner, stage, rehearsal

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def load(self) -> None:
        self.inner.load()

    def unload(self, *, free: bool = True) -> None:
        self.inner.unload(free=free)

    def retune(self, settings: Any) -> None:
        self.settings = settings
        self.inner.retune(settings)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.rehearsal.before_attempt(self.stage)
        return self.inner.run(*args, **kwargs)  # type: ignore[attr-defined]

    def separate_stream(self, *args: Any, **kwargs: Any) -> Any:
        """Demucs over a streamed song: an attempt like ``run``."""
        self.rehearsal.before_attempt(self.stage)
        return self.inner.separate_stream(*args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:  # anything else the engine offers (sample_rate, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
