"""``ugpu monitor``: VRAM, temperature, utilisation, power and the active runs, once or live."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from ultrasinger_gpu_cli.cli.common import err_console, handles_errors, open_store



# -- monitor ----------------------------------------------------------------------------------
class _Keys:
    """Reads single keys from a terminal stdin in the background (for ``q``); restores it on exit."""

    def __init__(self) -> None:
        self.pressed: list[str] = []
        self._saved = None
        self._stop = False

    def __enter__(self) -> _Keys:
        import threading

        if not sys.stdin.isatty():
            return self
        try:
            import termios
            import tty

            fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError):  # pragma: no cover - Windows consoles: Ctrl-C still quits
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        import select

        while not self._stop:
            ready, _, _ = select.select([sys.stdin], [], [], 0.1)
            if ready:
                ch = sys.stdin.read(1)
                if ch:
                    self.pressed.append(ch)

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)

    @property
    def quit(self) -> bool:
        return any(ch in ("q", "Q") for ch in self.pressed)


@handles_errors
def monitor(
    ctx: typer.Context,
    live: Annotated[bool, typer.Option("--live", help="Full-screen dashboard until q or Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between samples.", min=0.1)] = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per sample and GPU (NDJSON) on stdout.")] = False,
    count: Annotated[Optional[int], typer.Option("--count", help="Stop after this many samples.", min=1, show_default=False)] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="Only this GPU (NVML index).", min=0, show_default=False)] = None,
    log: Annotated[bool, typer.Option("--log", help="Also write the samples to performance_log.")] = False,
    alert: Annotated[Optional[list[str]], typer.Option("--alert", help="Alert threshold, e.g. temp=83, vram=90, speed=0.5, throttle=off.", show_default=False)] = None,
) -> None:
    """VRAM, temperature, utilisation, power, processes and the active ugpu runs, once or live (/gpu/monitor)."""
    import math
    import time

    from ultrasinger_gpu_cli.errors import InvalidSettingError
    from ultrasinger_gpu_cli.gpu.monitoring import Monitor, Thresholds
    from ultrasinger_gpu_cli.cli.monitor_view import alert_line, live_screen, monitor_dashboard, monitor_view

    if not (math.isfinite(interval) and 0.1 <= interval <= 3600):
        raise InvalidSettingError(f"invalid --interval {interval!r}; it must be a number of seconds from 0.1 to 3600")
    thresholds = Thresholds.parse(alert)
    store = open_store(ctx)
    mon = Monitor(store=store, gpu=gpu, thresholds=thresholds)
    console = err_console()

    def take():
        return mon.take(processes=not json_out, log_samples=log)

    if live:
        taken = 0
        with _Keys() as keys, live_screen(console) as screen:
            try:
                while not keys.quit and (count is None or taken < count):
                    snap, _ = take()
                    taken += 1
                    screen.update(monitor_dashboard(snap, mon.history, width=console.size.width, interval_s=interval),
                                  refresh=True)  # fmt: skip
                    deadline = time.monotonic() + interval
                    while time.monotonic() < deadline and not keys.quit:
                        time.sleep(0.05)
            except KeyboardInterrupt:
                pass
        return
    taken = 0
    try:
        while True:
            snap, fresh = take()
            taken += 1
            for a in fresh:
                console.print(alert_line(a), highlight=False)
            if json_out:
                for record in snap.ndjson_records():
                    sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
            else:
                console.print(monitor_view(snap, mon.history, width=console.size.width))
            if not json_out or (count is not None and taken >= count):
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return

#: This group's commands, in the order ``ugpu --help`` lists them.
COMMANDS = (monitor,)
