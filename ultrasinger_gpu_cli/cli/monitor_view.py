"""The monitor's screens (``ugpu monitor``): each GPU's card, the active runs, sparklines of the
last minutes, alerts. rich renderables from the core's snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ultrasinger_gpu_cli.cli.render import NA, kv_table, na, sparkline, temperature
from ultrasinger_gpu_cli.gpu.monitoring import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

def _bar(used: int | None, total: int | None, width: int) -> Text:
    if used is None or not total:
        return Text("n/a", style="dim")
    filled = max(0, min(width, int(round(width * used / total))))
    pct = used / total
    style = "green" if pct < 0.75 else "yellow" if pct < 0.9 else "bold red"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def _gb(mb: int | None) -> str:
    return NA if mb is None else f"{mb / 1024:.1f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return NA
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def monitor_view(snap: Snapshot, history: dict[int, dict[str, Any]], *, width: int = 120) -> RenderableType:
    """The dashboard for one snapshot: full layout from 100 columns, compact below."""
    compact = width < 100
    parts: list[RenderableType] = []
    for alert in snap.alerts:
        parts.append(Text(f"ALERT {alert.kind}: {alert.message}", style="bold red"))
    if not snap.gpus:
        parts.append(Text(f"No NVIDIA GPU: {snap.nvml_error or 'NVML sees none'}. Showing the host only.", style="yellow"))
    ugpu_pids = {r.pid for r in snap.runs if r.pid}
    for g in snap.gpus:
        s = g.sample
        title = f"GPU {s.index}: {g.name or 'unknown'}"
        if s.lost:
            parts.append(Text(f"{title}: lost ({s.error})", style="bold red"))
            continue
        power = f"{na(s.power_draw_w, '{:.0f}')}/{na(s.power_limit_w, '{:.0f}')} W"
        if compact:
            short = (g.name or "unknown").replace("NVIDIA ", "").replace("GeForce ", "")[:18]
            line = Text(f"GPU{s.index} {short} ") + _bar(s.vram_used_mb, s.vram_total_mb, 10)
            line += Text(f" {_gb(s.vram_used_mb)}/{_gb(s.vram_total_mb)} GB  util {na(s.utilization_gpu_percent, '{}%')}  ")
            line += temperature(s.temperature_c) + Text(f"  {power}")
            parts.append(line)
            continue
        t = kv_table()
        vram = _bar(s.vram_used_mb, s.vram_total_mb, 40)
        vram += Text(f"  {_gb(s.vram_used_mb)} used / {_gb(s.vram_free_mb)} free / {_gb(s.vram_total_mb)} GB")
        t.add_row("VRAM", vram)
        t.add_row("Utilisation", f"{na(s.utilization_gpu_percent, '{} %')} GPU, {na(s.utilization_memory_percent, '{} %')} memory")
        t.add_row("Temperature", temperature(s.temperature_c))
        t.add_row("Power", power)
        t.add_row("Clocks", f"{na(s.clock_graphics_mhz, '{} MHz')} graphics, {na(s.clock_memory_mhz, '{} MHz')} memory")
        if g.throttle:
            t.add_row("Throttling", Text(", ".join(g.throttle), style="yellow"))
        h = history.get(s.index, {})
        t.add_row("VRAM history", Text(sparkline(h.get("vram", []), 40, s.vram_total_mb), style="cyan"))
        t.add_row("Util history", Text(sparkline(h.get("util", []), 40, 100), style="green"))
        t.add_row("Temp history", Text(sparkline(h.get("temp", []), 40, 100), style="red"))
        if g.processes:
            procs = ", ".join(
                f"{'*' if p.pid in ugpu_pids or g.process_names.get(p.pid) == 'ugpu' else ''}{p.pid} "
                f"{g.process_names.get(p.pid, '?')} {na(p.vram_used_mb, '{} MB')}"
                for p in g.processes
            )
            t.add_row("Processes", procs + "  (* = ugpu)")
        else:
            t.add_row("Processes", Text("none", style="dim"))
        parts.append(Panel(t, title=title, border_style="cyan", expand=False))
    runs = [r for r in snap.runs]
    if runs:
        if compact:
            for r in runs:
                state = "" if r.alive else " (stale: its process is gone)"
                parts.append(Text(f"run {r.song} · {r.stage} {na(r.progress and round(r.progress * 100), '{}%')} "
                                  f"{na(r.speed_x, '{:.2f}x')} ETA {_eta(r.eta_s)}{state}"))  # fmt: skip
        else:
            table = Table(title="Active ugpu runs", title_justify="left", box=box.SIMPLE_HEAD)
            for col in ("song", "stage", "progress", "x real time", "ETA", "pid"):
                table.add_column(col)
            for r in runs:
                table.add_row(r.song or NA, r.stage or NA, na(None if r.progress is None else round(r.progress * 100), "{} %"),
                              na(r.speed_x, "{:.2f}x"), _eta(r.eta_s),
                              f"{r.pid}" + ("" if r.alive else " (gone)"))  # fmt: skip
            parts.append(table)
    else:
        parts.append(Text("No ugpu run is active.", style="dim"))
    host = snap.host
    parts.append(Text(f"Host: CPU {host.cpu_percent:.0f}%  RAM {_gb(host.ram_used_mb)}/{_gb(host.ram_total_mb)} GB"))
    return Group(*parts)


def live_screen(console: Console):
    """The full-screen area ``ugpu monitor --live`` redraws."""
    from rich.live import Live

    return Live(console=console, screen=True, auto_refresh=False, transient=True)


def monitor_dashboard(snap: Snapshot, history: dict[int, dict[str, Any]], *, width: int, interval_s: float) -> RenderableType:
    footer = Text(f"ugpu monitor · every {interval_s:g} s · q quits", style="dim")
    return Group(monitor_view(snap, history, width=width), footer)


def alert_line(alert: Any) -> str:
    return f"[bold red]alert[/] {alert.kind}: {alert.message}"
