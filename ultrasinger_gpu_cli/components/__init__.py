"""The component registry: Demucs, Whisper and CREPE, each one :class:`ComponentSpec`.

Everything that varies by component (settings, tier defaults, VRAM estimate, fallback floor,
model files, output writers, backends) lives in its spec; the resolver, the fallback ladder,
``ugpu models``, the stage runner and the CLI iterate over :data:`SPECS`. A new backend is one
module defining ``BACKEND`` plus one ``SPEC.register(name, module)`` line.
"""

from __future__ import annotations

from collections.abc import Callable

from ultrasinger_gpu_cli.components.base import Backend, ComponentSpec, StageOptions, StageOutputs
from ultrasinger_gpu_cli.components.crepe import CREPE, CrepeSettings
from ultrasinger_gpu_cli.components.demucs import DEMUCS, DemucsSettings
from ultrasinger_gpu_cli.components.settings import ParameterValues, SettingValue, StageSettings
from ultrasinger_gpu_cli.components.whisper import WHISPER, WhisperSettings
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.plan.tiers import ALL_TIERS, MODE_TABLE, Tier

#: In the design's order (its API responses list whisper, demucs, crepe).
SPECS: dict[str, ComponentSpec] = {s.name: s for s in (WHISPER, DEMUCS, CREPE)}
COMPONENTS: tuple[str, ...] = tuple(SPECS)
#: The order the pipeline runs them in.
PIPELINE_ORDER: tuple[str, ...] = ("demucs", "whisper", "crepe")


def spec(name: str) -> ComponentSpec:
    """The spec of ``name``; :class:`InvalidSettingError` listing the valid ones otherwise."""
    found = SPECS.get(name)
    if found is None:
        raise InvalidSettingError(f"invalid component {name!r}; valid choices: {', '.join(SPECS)}")
    return found


def table_columns() -> list[tuple[str, Callable[[Tier], str]]]:
    """The tier table's columns, from every spec's ``table_columns``."""
    out: list[tuple[str, Callable[[Tier], str]]] = []
    for s in SPECS.values():
        for header, parameter, fmt in s.table_columns:
            out.append((header, lambda t, s=s, p=parameter, f=fmt: f.format(s.tier_defaults[t.key][p])))
    return out


def tiers_markdown() -> str:
    """The tier table as Markdown, one column per component parameter the specs list; the
    README carries exactly this (a test checks)."""
    columns = table_columns()
    lines = ["| tier | " + " | ".join(header for header, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]  # fmt: skip
    for t in ALL_TIERS:
        lines.append(f"| {t.label} | " + " | ".join(cell(t) for _, cell in columns) + " |")
    lines.append("")
    lines.append("| mode | batch factor | VRAM share | Demucs chunk | effect |")
    lines.append("|---|---|---|---|---|")
    for m in MODE_TABLE.values():
        chunk = m.demucs_chunk or "tier's"
        lines.append(f"| {m.key} | x{m.batch_factor:g} | {m.vram_fraction:.0%} | {chunk} | {m.why} |")
    return "\n".join(lines)


__all__ = [
    "COMPONENTS", "CREPE", "DEMUCS", "PIPELINE_ORDER", "SPECS", "WHISPER", "Backend", "ComponentSpec", "CrepeSettings",
    "DemucsSettings", "ParameterValues", "SettingValue", "StageOptions", "StageOutputs", "StageSettings",
    "WhisperSettings", "spec", "table_columns", "tiers_markdown",
]  # fmt: skip
