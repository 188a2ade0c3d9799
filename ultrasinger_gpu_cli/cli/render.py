"""rich renderers for people. Pure functions: core objects in, renderables out.

Only the CLI imports this module; the core never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ultrasinger_gpu_cli.gpu.facts import Detection, GpuInfo
from ultrasinger_gpu_cli.plan.lanes import Lanes
from ultrasinger_gpu_cli.plan.resolver import ComponentPlan, Plan
from ultrasinger_gpu_cli.store.stats import ComponentStats
from ultrasinger_gpu_cli.plan.tiers import ALL_TIERS, MODE_TABLE

if TYPE_CHECKING:  # pragma: no cover
    from ultrasinger_gpu_cli.song.evaluation import Evaluation
    from ultrasinger_gpu_cli.weights.models import ModelStatus
    from ultrasinger_gpu_cli.usecases.models import BackendInfo
    from ultrasinger_gpu_cli.usecases.plan import Ladders

NA = "n/a"
_SOURCE_STYLE = {"tier": "dim", "mode": "cyan", "hardware": "yellow", "override": "magenta", "flag": "green"}


def na(value: Any, fmt: str = "{}") -> str:
    return NA if value is None else fmt.format(value)


def temperature(value: int | None) -> Text:
    if value is None:
        return Text(NA, style="dim")
    style = "green" if value < 70 else "yellow" if value < 83 else "bold red"
    return Text(f"{value} °C", style=style)


def kv_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    return table


def gpu_panel(gpu: GpuInfo, verdict: tuple[bool | None, str, str | None] | None = None) -> Panel:
    if gpu.lost:
        body = Text(f"lost during detection: {gpu.error or 'no answer from the driver'}", style="bold red")
        return Panel(body, title=f"GPU {gpu.index}: {gpu.name or 'unknown'}", border_style="red")
    t = kv_table()
    t.add_row("UUID", na(gpu.uuid))
    used = na(gpu.vram_used_mb, "{} MB")
    free = na(gpu.vram_free_mb, "{} MB")
    t.add_row("VRAM", f"{na(gpu.vram_total_mb, '{} MB')} total ({gpu.vram_total_gb} GB), {used} used, {free} free")
    t.add_row("Compute capability", f"{na(gpu.compute_capability)} ({na(gpu.sm)})")
    t.add_row("Temperature", temperature(gpu.temperature_c))
    t.add_row("Power", f"{na(gpu.power_draw_w, '{:.0f} W')} of {na(gpu.power_limit_w, '{:.0f} W')} limit")
    t.add_row("Utilisation", f"{na(gpu.utilization_gpu_percent, '{} %')} GPU, {na(gpu.utilization_memory_percent, '{} %')} memory")
    pcie_now = f"Gen {na(gpu.pcie_gen)} x{na(gpu.pcie_width)}"
    pcie_max = f"Gen {na(gpu.pcie_gen_max)} x{na(gpu.pcie_width_max)}"
    t.add_row("PCIe link", f"{pcie_now} (max {pcie_max})")
    style = "green"
    if verdict is not None:
        ok, reason, fix = verdict
        mark = {True: ("yes", "green"), False: ("NO", "bold red"), None: ("unknown", "yellow")}[ok]
        style = mark[1] if ok is not True else style
        t.add_row("PyTorch can run it", Text(f"{mark[0]}: {reason}", style=mark[1]))
        if fix and ok is not True:
            t.add_row("Fix", Text(fix, style="bold"))
    return Panel(t, title=f"GPU {gpu.index}: {gpu.name or 'unknown'}", border_style=style, expand=False)


def detection_view(detection: Detection, plan: Plan) -> RenderableType:
    parts: list[RenderableType] = []
    if detection.gpus:
        head = kv_table()
        head.add_row("Driver", na(detection.driver_version))
        head.add_row("CUDA (driver)", na(detection.cuda_driver_version))
        parts.append(head)
        for gpu in detection.gpus:
            compat = detection.compatibility_of(gpu.index)
            verdict = (compat.torch_can_run, compat.reason, compat.fix_command) if compat else None
            parts.append(gpu_panel(gpu, verdict))
    else:
        host = detection.host
        t = kv_table()
        t.add_row("GPU", Text(f"none: {detection.nvml_error or 'NVML found no GPU'}", style="yellow"))
        t.add_row("CPU", host.cpu_model)
        t.add_row("Cores", f"{na(host.cpu_cores_physical)} physical, {na(host.cpu_cores_logical)} logical")
        t.add_row("RAM", na(host.ram_total_mb, "{} MB"))
        t.add_row("ugpu will", "run every stage on the CPU in float32, with the CPU settings below")
        parts.append(Panel(t, title="No NVIDIA GPU", border_style="yellow", expand=False))
    parts.append(frameworks_table(detection))
    for warning in detection.warnings:
        parts.append(Text(f"! {warning}", style="yellow"))
    parts.append(plan_view(plan))
    return Group(*parts)


def frameworks_table(detection: Detection) -> Table:
    fw = detection.frameworks
    t = Table(title="Frameworks" + (" (cached; --force re-checks)" if fw.from_cache else ""), title_justify="left")
    t.add_column("framework")
    t.add_column("version")
    t.add_column("details")
    torch = fw.torch
    if not torch.installed:
        t.add_row("PyTorch", NA, "not installed: the engines need it (see the README)")
    elif torch.error:
        t.add_row("PyTorch", na(torch.version), Text(f"broken: {torch.error}", style="red"))
    else:
        build = f"CUDA {torch.cuda_build}" if torch.cuda_build else "CPU-only build"
        archs = " ".join(torch.arch_list) if torch.arch_list else "-"
        t.add_row("PyTorch", torch.version, f"{build}; CUDA available: {torch.cuda_available}; archs: {archs}")
    tf = fw.tensorflow
    if tf.installed:
        gpus = ", ".join(tf.gpus) or "none"
        t.add_row("TensorFlow", na(tf.version), f"GPUs it sees: {gpus}" + (f"; error: {tf.error}" if tf.error else ""))
    else:
        t.add_row("TensorFlow", NA, "not installed (optional: CREPE's tensorflow backend, pip install 'ultrasinger-gpu-cli[tensorflow]')")
    return t


def plan_view(plan: Plan, lanes: Lanes | None = None) -> RenderableType:
    target = plan.target
    head = kv_table()
    what = f"{target.name}" + (f" ({target.vram_total_gb} GB)" if target.is_gpu else "")
    if target.hypothetical:
        what += "  [HYPOTHETICAL: not in this machine]"
    head.add_row("Planned for", what)
    head.add_row("Mode", plan.mode)
    head.add_row("Tier", plan.tier.label)
    if plan.vram_budget_mb:
        head.add_row("VRAM budget", f"{plan.vram_budget_mb} MB (memory fraction {plan.memory_fraction})")
    head.add_row("Batches", lanes.why if lanes is not None and not plan.uses_gpu else plan.ahead.why)
    table = _settings_table()
    for name, cplan in plan.components.items():
        _component_rows(table, name, cplan)
    notes = [Text(f"• {n}", style="yellow") for n in plan.notes]
    title = "Plan (hypothetical)" if target.hypothetical else "Plan"
    border = "magenta" if target.hypothetical else "cyan"
    return Group(Panel(Group(head, *notes), title=title, border_style=border, expand=False), table)


def _settings_table(title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=True, box=box.SIMPLE_HEAD)
    table.add_column("component", style="bold", no_wrap=True)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    return table


def _short_reason(reason: str) -> str:
    """Drop the "<tier> tier: " prefix: the tier is in the panel's header."""
    head, sep, rest = reason.partition(" tier: ")
    return rest if sep and len(head) < 12 else reason


def _component_rows(table: Table, name: str, cplan: ComponentPlan) -> None:
    first = True
    for param, setting in cplan.settings.items():
        style = _SOURCE_STYLE.get(setting.source, "")
        table.add_row(
            name if first else "", param, str(setting.value), Text(setting.source, style=style),
            _short_reason(setting.reason),
        )  # fmt: skip
        first = False
    if cplan.estimated_vram_mb is not None:
        table.add_row("", "peak VRAM", f"~{cplan.estimated_vram_mb} MB", Text("estimate", style="dim"),
                      "weights + batch + CUDA context", end_section=True)  # fmt: skip
    else:
        table.add_row("", "", "", "", "", end_section=True)


def component_view(plan: Plan, component: str, override: Mapping[str, Any]) -> RenderableType:
    table = _settings_table(f"{component} on {plan.target.name} ({plan.mode}, {plan.tier.label})")
    _component_rows(table, component, plan.components[component])
    parts: list[RenderableType] = [table]
    if override:
        shown = ", ".join(f"{k}={v}" for k, v in override.items())
        parts.append(Text(f"stored override: {shown} (ugpu {component} --reset removes it)", style="magenta"))
    parts += [Text(f"• {note}", style="yellow") for note in configured_notes(plan, component)]
    return Group(*parts)


def configured_notes(plan: Plan, component: str) -> list[str]:
    """The plan's notes about this component, and the general ones."""
    return [n for n in plan.notes if n.split(":")[0] == component or n.split(":")[0] not in plan.components]


def tier_table() -> RenderableType:
    """The tier table and the modes (``ugpu optimize --tiers``)."""
    from ultrasinger_gpu_cli.components import SPECS

    t = Table(title="Tier table (balanced)", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("tier", no_wrap=True)
    for spec in SPECS.values():  # one column per component: its values joined by " / "
        t.add_column(f"{spec.name}\n" + " / ".join(p for _, p, _ in spec.table_columns), overflow="fold")
    for tier in ALL_TIERS:
        t.add_row(tier.label, *(" / ".join(f.format(s.tier_defaults[tier.key][p]) for _, p, f in s.table_columns)
                                for s in SPECS.values()))  # fmt: skip
    modes = Table(title="Modes", title_justify="left")
    modes.add_column("mode")
    modes.add_column("effect")
    for mode in MODE_TABLE.values():
        modes.add_row(mode.key, mode.why)
    return Group(t, modes)


def stats_view(stats: list[ComponentStats], width: int = 120) -> Table:
    """Per component and GPU; the trend columns (sparklines, oldest run first) from 110 columns."""
    wide = width >= 110
    t = Table(title="Performance by component", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("component", no_wrap=True)
    t.add_column("on", no_wrap=True)
    for col in ("runs", "median x RT", "best", "p95", "peak VRAM", "max temp", "fallbacks"):
        t.add_column(col, no_wrap=True)
    if wide:
        t.add_column("x RT trend", no_wrap=True)
        t.add_column("VRAM trend", no_wrap=True)
    for s in stats:
        cells = [
            s.component, s.gpu or NA, str(s.runs), na(s.median_speed_x, "{:.2f}x"), na(s.best_speed_x, "{:.2f}x"),
            na(s.p95_speed_x, "{:.2f}x"), na(s.peak_vram_mb, "{} MB"), na(s.max_temperature_c, "{} °C"), str(s.fallbacks),
        ]  # fmt: skip
        if wide:
            cells += [Text(sparkline(s.speed_trend, 16), style="green"), Text(sparkline(s.vram_trend, 16), style="cyan")]
        t.add_row(*cells)
    return t


_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None] | Any, width: int = 30, top: float | None = None) -> str:
    """The last ``width`` values as block characters (blank where there was no value)."""
    data = list(values)[-width:]
    known = [v for v in data if v is not None]
    if not known:
        return ""
    high = top if top else max(known) or 1.0
    out = []
    for v in data:
        if v is None:
            out.append(" ")
        else:
            out.append(_BLOCKS[min(len(_BLOCKS) - 1, max(0, int(v / high * (len(_BLOCKS) - 1) + 0.5)))])
    return "".join(out)


# -- fallback and models ----------------------------------------------------------------------------
def fallback_view(ladders: Ladders) -> RenderableType:
    plan = ladders.plan
    table = Table(title=f"Fallback ladders on {plan.target.name} ({plan.mode})", title_justify="left")
    for col in ("stage", "step", "device / batch", "when"):
        table.add_column(col)
    for stage, rungs in ladders.ladders.items():
        for i, rung in enumerate(rungs):
            table.add_row(stage if i == 0 else "", str(i + 1), rung.label, "first" if i == 0 else f"then: {rung.why}",
                          end_section=i == len(rungs) - 1)  # fmt: skip
    if not ladders.events:
        return Group(table, Text("No fallback events yet: every stage has run on its planned settings."))
    recent = Table(title="Recent fallback events", title_justify="left")
    for col in ("when", "song", "stage", "where", "from", "to", "reason"):
        recent.add_column(col, overflow="fold")
    for e in ladders.events:
        where = f"GPU {e.gpu_index}" if e.gpu_index is not None else (e.device or "")
        recent.add_row(e.created_at, e.song or "", e.stage, where, e.from_setting, e.to_setting, e.reason or "")
    return Group(table, recent)


def models_table(statuses: list[ModelStatus], checksums: Mapping[Any, str] | None = None) -> Table:
    table = Table(title="Models", title_justify="left")
    for col in ("component", "backend", "model", "present", "size", "where", "sha256"):
        table.add_column(col, overflow="fold")
    for status in statuses:
        for f in status.files:
            size = f"{f.size_bytes / 1e6:.1f} MB" if f.size_bytes else "-"
            mark = "[green]yes[/]" if f.present else "[red]missing[/]"
            digest = (checksums or {}).get(f.path) or f.expected_sha256_prefix or "-"
            table.add_row(status.engine, status.backend, status.model, mark, size, f"{f.path}\n[dim]{status.location}[/]",
                          digest)  # fmt: skip
    return table


def no_stats_yet(db_path: Any) -> Text:
    return Text(
        "No performance data yet. Every engine run (ugpu whisper/demucs/crepe AUDIO, ugpu run) logs its speed, "
        f"VRAM and temperature to {db_path}; come back after the first one."
    )


def backends_table(listing: list[BackendInfo]) -> Table:
    table = Table(title="Backends", title_justify="left")
    for col in ("component", "backend", "default", "installed", "what it is"):
        table.add_column(col, overflow="fold")
    for row in listing:
        installed = "[green]yes[/]" if row.installed else f"[red]no[/] ({row.install})"
        table.add_row(row.component, row.backend, "yes" if row.default else "", installed, row.summary)
    return table


def evaluation_table(result: Evaluation) -> RenderableType:
    """``ugpu eval``: one row per song, the mean last."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    table = Table(box=box.SIMPLE_HEAD, title="Generated charts against the reference")
    for column in ("song", "notes (ref/gen)", "note match", "onset error", "timing (+ late)", "pitch",
                   "pitch (any octave)", "coverage", "lyrics", "line starts"):  # fmt: skip
        table.add_column(column, justify="left" if column == "song" else "right")
    for s in result.scores:
        table.add_row(s.name, f"{s.reference_notes}/{s.generated_notes}", pct(s.note_match_rate),
                      na(s.median_onset_error_ms, "{:.0f} ms"), na(s.word_onset_offset_ms, "{:+.0f} ms"),
                      pct(s.pitch_accuracy), pct(s.pitch_accuracy_any_octave),
                      pct(s.coverage), pct(s.lyric_similarity), pct(s.line_starts_recall))  # fmt: skip
    if len(result.scores) > 1:
        table.add_row(Text("mean", style="bold"), "", pct(result.mean("note_match_rate")),
                      na(result.mean("median_onset_error_ms"), "{:.0f} ms"),
                      na(result.mean("word_onset_offset_ms"), "{:+.0f} ms"), pct(result.mean("pitch_accuracy")),
                      pct(result.mean("pitch_accuracy_any_octave")), pct(result.mean("coverage")),
                      pct(result.mean("lyric_similarity")), pct(result.mean("line_starts_recall")))  # fmt: skip
    parts: list[RenderableType] = [table]
    for label, names in (("generated only", result.unmatched_generated), ("reference only", result.unmatched_reference)):
        if names:
            parts.append(Text(f"{label} (no chart of the same name on the other side): " + ", ".join(names), style="yellow"))
    return Group(*parts)
