"""``ugpu monitor``: renderers on a fixed-width console, NDJSON, alerts, the live mode in a pty."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import termios
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.fake_nvml import FakeCard, h100, make_fake_nvml, rtx_5060_ti
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.gpu.monitoring import Monitor, Thresholds
from ultrasinger_gpu_cli.gpu.nvml import Nvml
from ultrasinger_gpu_cli.cli.monitor_view import monitor_view
from ultrasinger_gpu_cli.cli.render import sparkline
from ultrasinger_gpu_cli.store.db import Store


def render(snapshot, history, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(monitor_view(snapshot, history, width=width))
    return console.export_text()


def hot_card() -> FakeCard:
    return FakeCard("NVIDIA GeForce RTX 4090", "GPU-hot", 24564, used_mb=23900, cc=(8, 9), temperature_c=91)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "m.db") as s:
        yield s


def test_full_layout_with_several_gpus_and_an_active_run(store):
    store.start_run("run1", mode="balanced", gpu=None, pid=os.getpid())
    store.update_run("run1", song="Song.mp3", stage="whisper", progress=0.5, speed=4.0, audio_seconds=200)
    mon = Monitor(Nvml(make_fake_nvml([rtx_5060_ti(), h100()])), store)
    mon.snapshot()
    snap = mon.snapshot()
    text = render(snap, mon.history, 120)
    assert "GPU 0: NVIDIA GeForce RTX 5060 Ti" in text and "GPU 1: NVIDIA H100 80GB HBM3" in text
    assert "0.5 used / 15.4 free / 15.9 GB" in text and "25/180 W" in text and "45 °C" in text
    assert "Song.mp3" in text and "whisper" in text and "50 %" in text and "4.00x" in text
    assert "0:25" in text  # ETA: half of 200 s of audio at 4x real time
    assert "VRAM history" in text and "Host: CPU" in text


def test_compact_layout_for_a_narrow_terminal(store):
    mon = Monitor(Nvml(make_fake_nvml([rtx_5060_ti(), h100()])), store)
    text = render(mon.snapshot(), mon.history, 70)
    lines = text.splitlines()
    assert any(line.startswith("GPU0 ") for line in lines) and any(line.startswith("GPU1 ") for line in lines)
    assert all(len(line) <= 70 for line in lines)
    assert "VRAM history" not in text


def test_no_gpu_shows_the_host_and_says_so(store):
    text = render(Monitor(Nvml(), store).snapshot(), {}, 120)  # the real NVML of this machine: no driver
    assert "No NVIDIA GPU" in text and "Host: CPU" in text


def test_alerts_for_heat_vram_throttling_and_a_slow_run(store):
    for speed in (10.0, 11.0, 12.0):
        store.log_performance(component="crepe", device="cuda", processing_speed_multiplier=speed)
    store.start_run("slow", mode="balanced", gpu=None, pid=os.getpid())
    store.update_run("slow", song="S.mp3", stage="crepe", progress=0.2, speed=2.0, audio_seconds=100)
    card = hot_card()
    fake = make_fake_nvml([card])
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: 0x40  # hardware thermal slowdown
    mon = Monitor(Nvml(fake), store)
    snap = mon.snapshot()
    kinds = {a.kind for a in snap.alerts}
    assert kinds == {"temperature", "vram", "throttle", "speed"}
    assert "ALERT temperature" in render(snap, mon.history, 120)
    mon.record(snap, snap.alerts)
    assert store.query("SELECT COUNT(*) FROM alerts")[0][0] == 4
    relaxed = Monitor(Nvml(make_fake_nvml([hot_card()])), store, thresholds=Thresholds.parse(["temp=95", "vram=99.9", "speed=0.1"]))
    assert relaxed.snapshot().alerts == []


def test_sparkline():
    assert sparkline([0, 50, 100], top=100) == "▁▅█"
    assert sparkline([None, 1]) == " █" and sparkline([]) == ""


def test_ndjson_fields_types_count_and_gpu(fake_gpus):
    fake_gpus(rtx_5060_ti(), h100())
    result = CliRunner().invoke(app, ["monitor", "--json", "--count", "3", "--interval", "0.1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 6
    for r in records:
        assert isinstance(r["vram_used"], int) and isinstance(r["vram_free"], int)
        assert isinstance(r["gpu_utilization"], int) and isinstance(r["temperature"], int)
        assert r["processing_speed"] is None and isinstance(r["timestamp"], float)
        assert r["gpu_name"] and r["gpu_index"] in (0, 1)
    one = CliRunner().invoke(app, ["monitor", "--json", "--count", "2", "--gpu", "1", "--interval", "0.1"])
    assert {json.loads(line)["gpu_index"] for line in one.stdout.splitlines()} == {1}
    assert CliRunner().invoke(app, ["monitor", "--json", "--gpu", "5"]).exit_code == 2


def test_log_and_alert_overrides(fake_gpus):
    fake_gpus(rtx_5060_ti())
    result = CliRunner().invoke(app, ["monitor", "--json", "--count", "2", "--interval", "0.1", "--log", "--alert", "temp=40"])
    assert result.exit_code == 0
    assert result.stderr.count("alert temperature") == 1  # shown once, not at every sample
    with Store.open(os.environ["UGPU_DB"]) as store:
        assert store.query("SELECT COUNT(*) FROM performance_log WHERE component = 'monitor'")[0][0] == 2
        assert store.query("SELECT kind FROM alerts")[0][0] == "temperature"
        assert store.component_stats() == []  # monitor samples are not runs
    bad = CliRunner().invoke(app, ["monitor", "--alert", "heat=9"])
    assert bad.exit_code == 2 and "temp" in bad.output


def test_snapshot_without_flags_prints_once(fake_gpus):
    fake_gpus(rtx_5060_ti())
    result = CliRunner().invoke(app, ["monitor"])
    assert result.exit_code == 0 and "RTX 5060 Ti" in result.stderr and result.stdout == ""


def test_live_mode_in_a_pseudo_terminal_quits_with_q_and_restores_the_terminal(tmp_path):
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    env = {**os.environ, "COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color"}
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "monitor", "--live", "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)  # fmt: skip
    output = b""
    deadline = time.time() + 20
    while time.time() < deadline and output.count(b"Host: CPU") < 3:  # a few refreshes
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            output += os.read(master, 65536)
    os.write(master, b"q")
    code_ = proc.wait(timeout=20)
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            break
        try:
            output += os.read(master, 65536)
        except OSError:
            break
    after = termios.tcgetattr(slave)
    os.close(master)
    os.close(slave)
    assert code_ == 0
    assert output.count(b"Host: CPU") >= 3
    assert b"\x1b[?1049h" in output and b"\x1b[?1049l" in output  # entered and left the alternate screen
    assert after[3] == before[3]  # echo and canonical mode restored
