"""Monitoring: snapshots of the GPUs, the host and the active ugpu runs; history; alerts.

Core code: the CLI renders snapshots (``ugpu monitor``); the same NVML sampling serves
``ugpu run`` (:mod:`.sampler`). A snapshot costs a few NVML calls per GPU: handles and static
facts are cached in :mod:`.nvml`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity, GpuProcess, GpuSample
from ultrasinger_gpu_cli.gpu.nvml import Nvml, get_nvml
from ultrasinger_gpu_cli.gpu.processes import alive as process_alive

HISTORY = 120  # samples kept per GPU for the sparklines

# NVML's clock-event (throttle) reasons that mean the card is slowing itself down.
_THROTTLE_REASONS = {
    0x04: "software power cap",
    0x08: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "power brake",
}


@dataclass(frozen=True)
class Thresholds:
    temperature_c: float = 83.0
    vram_percent: float = 95.0
    speed_ratio: float = 0.5  # alert when a run is slower than this share of its stage's median
    throttle: bool = True

    KEYS = {"temp": "temperature_c", "vram": "vram_percent", "speed": "speed_ratio", "throttle": "throttle"}

    @classmethod
    def parse(cls, overrides: list[str] | None) -> Thresholds:
        """``["temp=80", "vram=90", "speed=0.4", "throttle=off"]`` over the defaults."""
        values: dict[str, Any] = {}
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            name = cls.KEYS.get(key.strip().lower())
            if not sep or name is None:
                raise InvalidSettingError(f"invalid --alert {item!r}; use KEY=VALUE with KEY one of: {', '.join(cls.KEYS)}")
            if name == "throttle":
                if raw.lower() not in ("on", "off", "true", "false", "1", "0"):
                    raise InvalidSettingError(f"invalid --alert {item!r}; throttle takes on or off")
                values[name] = raw.lower() in ("on", "true", "1")
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise InvalidSettingError(f"invalid --alert {item!r}; {key} takes a number") from None
            high = {"temperature_c": 150.0, "vram_percent": 100.0, "speed_ratio": 1.0}[name]
            if not (math.isfinite(values[name]) and 0 < values[name] <= high):
                raise InvalidSettingError(f"invalid --alert {item!r}; {key} takes a number above 0 and at most {high:g}")
        return cls(**values)


@dataclass(frozen=True)
class RunState:
    run_id: str
    pid: int | None
    song: str | None
    stage: str | None
    progress: float | None
    speed_x: float | None
    eta_s: float | None
    alive: bool

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "pid": self.pid, "song": self.song, "stage": self.stage,
                "progress": self.progress, "speed_x": self.speed_x, "eta_s": self.eta_s, "alive": self.alive}  # fmt: skip


@dataclass(frozen=True)
class HostSample:
    cpu_percent: float
    ram_used_mb: int
    ram_total_mb: int


@dataclass(frozen=True)
class GpuView:
    """One GPU in a snapshot: which one, its sample and processes."""

    gpu: GpuIdentity
    sample: GpuSample
    processes: tuple[GpuProcess, ...] = ()
    process_names: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.gpu.name

    @property
    def vram_percent(self) -> float | None:
        s = self.sample
        if s.vram_used_mb is None or not s.vram_total_mb:
            return None
        return 100.0 * s.vram_used_mb / s.vram_total_mb

    @property
    def throttle(self) -> list[str]:
        bits = self.sample.throttle_reasons or 0
        return [name for bit, name in _THROTTLE_REASONS.items() if bits & bit]


@dataclass(frozen=True)
class Alert:
    kind: str
    message: str
    value: float | None = None
    threshold: float | None = None
    gpu_index: int | None = None
    run_id: str | None = None


@dataclass
class Snapshot:
    timestamp: float
    gpus: list[GpuView]
    host: HostSample
    runs: list[RunState]
    nvml_error: str | None = None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def processing_speed(self) -> float | None:
        live = [r.speed_x for r in self.runs if r.alive and r.speed_x]
        return live[0] if live else None

    def ndjson_records(self) -> list[dict[str, Any]]:
        """The design's ``GET /api/gpu/monitor`` fields, one record per GPU (or the host)."""
        base = {"timestamp": round(self.timestamp, 3), "processing_speed": self.processing_speed,
                "active_runs": [r.to_dict() for r in self.runs if r.alive]}  # fmt: skip
        if not self.gpus:
            return [{**base, "gpu_index": None, "gpu_name": None, "vram_used": None, "vram_free": None,
                     "gpu_utilization": None, "temperature": None, "cpu_percent": self.host.cpu_percent,
                     "ram_used_mb": self.host.ram_used_mb, "note": self.nvml_error or "no GPU"}]  # fmt: skip
        return [
            {**base, "gpu_index": g.sample.index, "gpu_name": g.name, "vram_used": g.sample.vram_used_mb,
             "vram_free": g.sample.vram_free_mb, "vram_total": g.sample.vram_total_mb,
             "gpu_utilization": g.sample.utilization_gpu_percent, "temperature": g.sample.temperature_c,
             "power_draw_w": g.sample.power_draw_w, "power_limit_w": g.sample.power_limit_w,
             "throttle": g.throttle, "lost": g.sample.lost}
            for g in self.gpus
        ]  # fmt: skip


def _process_name(pid: int) -> str:
    try:
        import psutil

        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline()[:3])
        return "ugpu" if "ugpu" in cmd or "ultrasinger_gpu_cli" in cmd else proc.name()
    except Exception:  # noqa: BLE001 - gone, or another user's process
        return "?"


class Monitor:
    """Takes snapshots and keeps a rolling history per GPU."""

    def __init__(self, nvml: Nvml | None = None, store: Any = None, gpu: int | None = None,
                 thresholds: Thresholds | None = None) -> None:  # fmt: skip
        self.nvml = nvml or get_nvml()
        self.store = store
        self.gpu = gpu
        self.thresholds = thresholds or Thresholds()
        self.history: dict[int, dict[str, deque]] = {}
        self._identities: dict[int, GpuIdentity] = {}
        self._median_cache: dict[str, float | None] = {}
        self._seen_alerts: set[str] = set()

    def indices(self) -> list[int]:
        count = self.nvml.device_count()
        if self.gpu is not None:
            if not 0 <= self.gpu < max(count, 1) or count == 0:
                raise InvalidSettingError(
                    f"invalid GPU index {self.gpu}; "
                    + (f"valid choices: {', '.join(map(str, range(count)))}" if count else "this machine has no GPU")
                )
            return [self.gpu]
        return list(range(count))

    def _identity(self, index: int) -> GpuIdentity:
        if index not in self._identities:
            self._identities[index] = self.nvml.gpu(index).identity
        return self._identities[index]

    def take(self, *, processes: bool = True, log_samples: bool = False) -> tuple[Snapshot, list[Alert]]:
        """A snapshot, and the alerts new since the last one (each alert is stored once, not at
        every refresh)."""
        snap = self.snapshot(processes=processes)
        fresh = [a for a in snap.alerts if a.message not in self._seen_alerts]
        self._seen_alerts.update(a.message for a in snap.alerts)
        self.record(snap, fresh, log_samples=log_samples)
        return snap, fresh

    def snapshot(self, *, processes: bool = True) -> Snapshot:
        import psutil

        gpus = []
        for index in self.indices():
            sample = self.nvml.sample(index)
            procs = tuple(self.nvml.processes(index)) if processes else ()
            gpus.append(GpuView(self._identity(index), sample, procs, {p.pid: _process_name(p.pid) for p in procs}))
            h = self.history.setdefault(index, {k: deque(maxlen=HISTORY) for k in ("vram", "util", "temp")})
            h["vram"].append(sample.vram_used_mb)
            h["util"].append(sample.utilization_gpu_percent)
            h["temp"].append(sample.temperature_c)
        memory = psutil.virtual_memory()
        host = HostSample(psutil.cpu_percent(interval=None), int(memory.used // 2**20), int(memory.total // 2**20))
        snap = Snapshot(time.time(), gpus, host, self._runs(), None if gpus else self.nvml.unavailable_reason)
        snap.alerts = self.alerts(snap)
        return snap

    def _runs(self) -> list[RunState]:
        if self.store is None:
            return []
        out = []
        for row in self.store.active_runs():
            speed, progress, audio = row["processing_speed_multiplier"], row["progress"], row["audio_seconds"]
            eta = None
            if speed and progress is not None and audio:
                eta = max(0.0, (1.0 - progress) * audio / speed)
            alive = process_alive(row["pid"], row["pid_started"])
            out.append(RunState(row["run_id"], row["pid"], row["song"], row["stage"], progress, speed, eta, alive))
        return out

    def alerts(self, snap: Snapshot) -> list[Alert]:
        t = self.thresholds
        found = []
        for g in snap.gpus:
            s = g.sample
            if s.temperature_c is not None and s.temperature_c >= t.temperature_c:
                found.append(Alert("temperature", f"GPU {s.index} at {s.temperature_c} °C (alert at {t.temperature_c:g} °C)",
                                   s.temperature_c, t.temperature_c, s.index))  # fmt: skip
            pct = g.vram_percent
            if pct is not None and pct >= t.vram_percent:
                found.append(Alert("vram", f"GPU {s.index} VRAM {pct:.0f}% used (alert at {t.vram_percent:g}%)",
                                   pct, t.vram_percent, s.index))  # fmt: skip
            if t.throttle and g.throttle:
                found.append(Alert("throttle", f"GPU {s.index} is throttling: {', '.join(g.throttle)}", None, None, s.index))
        for run in snap.runs:
            if not (run.alive and run.stage and run.speed_x):
                continue
            if run.stage not in self._median_cache and self.store is not None:
                self._median_cache[run.stage] = self.store.median_speed(run.stage)
            median = self._median_cache.get(run.stage)
            if median and run.speed_x < t.speed_ratio * median:
                found.append(Alert("speed", f"{run.stage} of {run.song} at {run.speed_x:.2f}x real time, under "
                                   f"{t.speed_ratio:.0%} of its median {median:.2f}x", run.speed_x,
                                   t.speed_ratio * median, None, run.run_id))  # fmt: skip
        return found

    def record(self, snap: Snapshot, alerts: list[Alert], *, log_samples: bool = False) -> None:
        """Store ``alerts`` (and, with ``log_samples``, the snapshot's samples in ``performance_log``)."""
        if self.store is None or self.store.read_only:
            return
        for alert in alerts:
            gpu = next((g.gpu for g in snap.gpus if g.sample.index == alert.gpu_index), None)
            self.store.record_alert(kind=alert.kind, message=alert.message, value=alert.value, threshold=alert.threshold,
                                    gpu=gpu, run_id=alert.run_id)  # fmt: skip
        if log_samples:
            for g in snap.gpus:
                self.store.log_performance(
                    component="monitor", device="cuda", processing_speed_multiplier=snap.processing_speed,
                    gpu=g.gpu, vram_used_mb=g.sample.vram_used_mb,
                    gpu_utilization_percent=g.sample.utilization_gpu_percent, temperature_celsius=g.sample.temperature_c,
                )  # fmt: skip
