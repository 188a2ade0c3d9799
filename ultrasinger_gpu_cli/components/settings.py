"""The settings every component has, typed: the one type the engines, the plan and the store
share (each component's spec, :mod:`.base`, adds its own fields and validates them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TypeVar, Union

#: One setting's value as users give it and the store keeps it.
SettingValue = Union[str, int, float]
#: Settings of one component given by name (a stored override, flags): partial, validated.
ParameterValues = dict[str, SettingValue]


@dataclass(frozen=True)
class StageSettings:
    """Settings every component has. Subclasses add their own; all are frozen and validated
    (built by :meth:`ComponentSpec.settings`)."""

    backend: str
    model: str
    device: str
    batch_size: int
    compute_type: str

    @property
    def label(self) -> str:
        """How a rung of the fallback ladder is named: ``cuda batch 8``."""
        return f"{self.device} batch {self.batch_size}"

    def values(self) -> ParameterValues:
        return asdict(self)

    def but(self, **changes: SettingValue) -> StageSettings:
        return replace(self, **changes)


S = TypeVar("S", bound=StageSettings)
