"""What the performance log and the fallback events say: per component and GPU, the speeds,
peak VRAM, temperatures and fallbacks of past runs (``ugpu stats``, ``ugpu history``, the
slow-run alert). Read-only queries, mixed into :class:`.db.Store`."""

from __future__ import annotations

import sqlite3
import statistics
from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import Any

from ultrasinger_gpu_cli.store.schema import integer, number


@dataclass(frozen=True)
class ComponentStats:
    component: str
    gpu: str | None  # "GPU <index>" or "cpu"
    runs: int
    median_speed_x: float | None
    best_speed_x: float | None
    p95_speed_x: float | None
    peak_vram_mb: int | None
    max_temperature_c: int | None
    devices: tuple[str, ...]
    fallbacks: int = 0
    speed_trend: tuple[float, ...] = ()  # x real time per run, oldest first
    vram_trend: tuple[int | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "gpu": self.gpu,
            "runs": self.runs,
            "median_speed_x": self.median_speed_x,
            "best_speed_x": self.best_speed_x,
            "p95_speed_x": self.p95_speed_x,
            "peak_vram_mb": self.peak_vram_mb,
            "max_temperature_c": self.max_temperature_c,
            "devices": list(self.devices),
            "fallbacks": self.fallbacks,
            "speed_trend": list(self.speed_trend),
            "vram_trend": list(self.vram_trend),
        }


@dataclass(frozen=True)
class RecordedFallback:
    """A fallback event as the store keeps it."""

    event_id: str
    created_at: str
    run_id: str | None
    song: str | None
    stage: str
    from_setting: str
    to_setting: str
    reason: str | None
    device: str | None
    gpu_id: str | None
    gpu_index: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _where(device: Any, gpu_index: Any) -> str:
    """Where a stage ran, as stats group it: "GPU <index>", "cuda" (index unknown), or "cpu"."""
    index = integer(gpu_index)
    if device == "cuda" and index is not None:
        return f"GPU {index}"
    return str(device) if device else "cpu"


class PerformanceQueries:
    """The reads of the performance log and the fallback events (a :class:`.db.Store` has them,
    and gives them its ``query``)."""

    query: Callable[..., list[sqlite3.Row]]

    def median_speed(self, component: str) -> float | None:
        """The median x real time this component has reached before (for the slow-run alert)."""
        rows = self.query(
            "SELECT processing_speed_multiplier FROM performance_log WHERE component = ? AND NOT skipped "
            "AND processing_speed_multiplier IS NOT NULL ORDER BY logged_at DESC LIMIT 200",
            (component,),
        )
        speeds = [x for x in (number(r[0]) for r in rows) if x is not None]
        return statistics.median(speeds) if speeds else None

    def recent_fallbacks(self, limit: int = 20) -> list[RecordedFallback]:
        rows = self.query("SELECT * FROM fallback_events ORDER BY created_at DESC LIMIT ?", (limit,))
        return [RecordedFallback(**{f: row[f] for f in RecordedFallback.__dataclass_fields__}) for row in rows]

    def _log_filter(self, component: str | None, since: str | None, gpu: int | None) -> tuple[str, list[Any]]:
        sql = " WHERE component IS NOT NULL AND component != 'monitor'"
        params: list[Any] = []
        if component:
            sql += " AND component = ?"
            params.append(component)
        if since:
            sql += " AND logged_at >= ?"
            params.append(since)
        if gpu is not None:
            sql += " AND gpu_index = ?"
            params.append(gpu)
        return sql, params

    def performance_rows(self, component: str | None = None, since: str | None = None,
                         gpu: int | None = None) -> list[sqlite3.Row]:  # fmt: skip
        where, params = self._log_filter(component, since, gpu)
        return self.query(f"SELECT * FROM performance_log{where} ORDER BY logged_at, rowid", tuple(params))

    def component_stats(self, component: str | None = None, since: str | None = None,
                        gpu: int | None = None) -> list[ComponentStats]:  # fmt: skip
        """Per component and GPU: runs, median / best / p95 x real time, peak VRAM, max temperature,
        fallbacks, and the trend of x real time and peak VRAM over the runs."""
        grouped: dict[tuple[str, str], list[sqlite3.Row]] = {}
        for row in self.performance_rows(component, since, gpu):
            grouped.setdefault((str(row["component"]), _where(row["device"], row["gpu_index"])), []).append(row)
        fallback_sql = "SELECT stage, device, gpu_index, COUNT(*) FROM fallback_events" + (
            " WHERE created_at >= ?" if since else "")  # fmt: skip
        fallbacks: dict[tuple[str, str], int] = {}
        for stage, device, index, count in self.query(fallback_sql + " GROUP BY stage, device, gpu_index",
                                                      (since,) if since else ()):  # fmt: skip
            key = (str(stage), _where(device, index))
            fallbacks[key] = fallbacks.get(key, 0) + int(count)
        out = []
        for (name, where), rows in sorted(grouped.items()):
            speeds = [x for x in (number(r["processing_speed_multiplier"]) for r in rows if not r["skipped"])
                      if x is not None]  # fmt: skip
            vram = [x for x in (integer(r["vram_used_mb"]) for r in rows) if x is not None]
            temps = [x for x in (integer(r["temperature_celsius"]) for r in rows) if x is not None]
            out.append(
                ComponentStats(
                    component=name,
                    gpu=where,
                    runs=len(rows),
                    median_speed_x=statistics.median(speeds) if speeds else None,
                    best_speed_x=max(speeds) if speeds else None,
                    p95_speed_x=_percentile(speeds, 0.95) if speeds else None,
                    peak_vram_mb=max(vram) if vram else None,
                    max_temperature_c=max(temps) if temps else None,
                    devices=tuple(sorted({str(r["device"]) for r in rows if r["device"]})),
                    fallbacks=fallbacks.get((name, where), 0),
                    speed_trend=tuple(round(x, 3) for x in speeds),
                    vram_trend=tuple(integer(r["vram_used_mb"]) for r in rows),
                )
            )
        return out
