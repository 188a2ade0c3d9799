"""Every command through Typer's CliRunner: help, JSON shapes, exit codes, stdout vs stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import CU128_ARCHS
from tests.fake_nvml import card_6gb_no_temp, h100, lost_card, rtx_5060_ti
from ultrasinger_gpu_cli import __version__
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.failures import FallbackEvent
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity
from ultrasinger_gpu_cli.store.db import Store

COMMANDS = ["detect", "optimize", "whisper", "demucs", "crepe", "run", "fallback", "stats", "monitor", "serve", "models", "eval", "preview"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def rows(sql: str):
    with Store.open(os.environ["UGPU_DB"]) as store:
        return [tuple(r) for r in store.query(sql)]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(runner, command):
    result = run(runner, command, "--help")
    assert result.exit_code == 0
    assert f"Usage: ugpu {command}" in " ".join(result.output.split())
    own = app.registered_commands
    doc = next((c.callback.__doc__ for c in own if c.callback.__name__ == command), None)
    if doc is not None:  # a command's help shows its own docstring
        assert " ".join(doc.split()[:4]) in " ".join(result.output.split())


def test_root_help_lists_exactly_the_commands_and_version(runner):
    result = run(runner, "--help")
    assert result.exit_code == 0
    import typer.main

    assert set(typer.main.get_command(app).commands) == set(COMMANDS)  # no command left out of this list
    shown = {line.strip("│ ").split(" ")[0] for line in result.output.splitlines()}
    assert set(COMMANDS) <= shown
    assert run(runner, "--version").stdout.strip() == f"ugpu {__version__}"


# -- detect ----------------------------------------------------------------------------------
def test_detect_without_gpu_is_the_real_path_of_this_machine(runner):
    result = run(runner, "detect", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["gpu_detected"] is False and data["vram_total"] == 0
    assert data["cuda_version"] is None
    assert data["host"]["cpu_cores_logical"] >= 1 and data["host"]["ram_total_mb"] > 0
    assert data["optimization_applied"]["crepe"]["device"] == "cpu"
    # The no-GPU tier plans faster-whisper (int8) where it is installed (make test installs it).
    assert data["optimization_applied"]["whisper"]["compute_type"] == "int8"
    assert "driver" in data["nvml_error"]
    assert rows("SELECT COUNT(*) FROM framework_probe") == [(1,)]


def test_detect_human_output_goes_to_stderr_only(runner):
    result = run(runner, "detect")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No NVIDIA GPU" in result.stderr and "CPU" in result.stderr


def test_require_gpu_exits_3_without_gpu(runner):
    result = run(runner, "detect", "--require-gpu", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["gpu_detected"] is False  # the data is still printed
    assert "--require-gpu" in result.stderr


def test_detect_rtx_5060_ti_with_cu126_torch_says_so_and_prints_the_fix(runner, fake_gpus, fake_torch):
    fake_gpus(rtx_5060_ti(), cuda=12090)
    fake_torch()  # a cu126 build: no sm_120
    result = run(runner, "detect", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["gpu_detected"] is True and data["vram_total"] == 16 and data["cuda_version"] == "12.9"
    assert data["gpus"][0]["compute_capability"] == "12.0"
    (compat,) = data["compatibility"]
    assert compat["torch_can_run"] is False
    assert "download.pytorch.org/whl/cu128" in compat["fix_command"]
    assert any("sm_120" in w for w in data["warnings"])
    assert data["optimization_applied"]["crepe"]["device"] == "cpu"  # it cannot run there yet
    human = run(runner, "detect", "--force")
    assert "NO" in human.stderr and "cu128" in human.stderr


def test_detect_rtx_5060_ti_with_cu128_torch_reproduces_the_design(runner, fake_gpus, fake_torch):
    fake_gpus(rtx_5060_ti())
    fake_torch(arch_list=CU128_ARCHS, cuda_build="12.8", version="2.8.0+cu128")
    data = json.loads(run(runner, "detect", "--json").stdout)
    assert data["optimization_applied"] == {
        "whisper": {"model": "large-v3-turbo", "batch_size": 32, "compute_type": "float16"},
        "demucs": {"model": "htdemucs_ft", "chunk_size": 262144, "overlap": 0.25},
        "crepe": {"model_capacity": "full", "step_size": 5, "device": "cuda"},
    }
    assert rows("SELECT gpu_id, gpu_name, vram_total_gb, cuda_version, driver_version, is_active FROM gpu_config") == [
        ("GPU-5060ti-0000", "NVIDIA GeForce RTX 5060 Ti", 16, "12.9", "575.51.03", 1)
    ]


def test_detect_several_cards_one_lost_one_without_temperature(runner, fake_gpus, fake_torch):
    fake_gpus(h100(), lost_card(), card_6gb_no_temp())
    fake_torch()
    result = run(runner, "detect", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [g["lost"] for g in data["gpus"]] == [False, True, False]
    assert data["gpus"][2]["temperature_c"] is None
    assert data["vram_total"] == 80
    assert any("lost" in w for w in data["warnings"])
    human = run(runner, "detect")
    assert "n/a" in human.stderr and "lost" in human.stderr
    six = json.loads(run(runner, "detect", "--json", "--gpu", "2").stdout)
    assert six["vram_total"] == 6 and six["tier"] == "6-8"


def test_detect_mode_and_vram_limit_are_accepted(runner, fake_gpus, fake_torch):
    fake_gpus(h100())
    fake_torch()
    data = json.loads(run(runner, "detect", "--json", "--mode", "aggressive", "--vram-limit", "8").stdout)
    assert data["optimization_mode"] == "aggressive" and data["vram_limit"] == 8 and data["tier"] == "8-12"


def test_detect_uses_the_cache_and_force_re_probes(runner, fake_gpus, monkeypatch):
    from ultrasinger_gpu_cli.gpu import frameworks
    from ultrasinger_gpu_cli.gpu.facts import TensorflowInfo, TorchInfo

    calls = []
    monkeypatch.setattr(frameworks, "probe_torch", lambda gpu_present=True: calls.append(1) or TorchInfo(installed=False))
    monkeypatch.setattr(frameworks, "probe_tensorflow", lambda gpu_present=True: TensorflowInfo(installed=False))
    fake_gpus(h100())
    first = json.loads(run(runner, "detect", "--json").stdout)
    second = json.loads(run(runner, "detect", "--json").stdout)
    forced = json.loads(run(runner, "detect", "--json", "--force").stdout)
    assert len(calls) == 2
    assert (first["frameworks_from_cache"], second["frameworks_from_cache"], forced["force_detection"]) == (
        False, True, True,
    )  # fmt: skip


def test_invalid_mode_exits_2_listing_the_choices(runner):
    result = runner.invoke(app, ["detect", "--mode", "turbo"])
    assert result.exit_code == 2
    assert "conservative" in result.output and "aggressive" in result.output


# -- optimize --------------------------------------------------------------------------------
def test_optimize_hypothetical_16gb_reproduces_the_design_and_says_hypothetical(runner):
    result = run(runner, "optimize", "--assume-vram", "16", "--assume-gpu", "RTX 5060 Ti", "--assume-cc", "12.0", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["hypothetical"] is True and data["vram_total"] == 16
    assert data["optimization_applied"]["whisper"] == {"model": "large-v3-turbo", "batch_size": 32, "compute_type": "float16"}
    assert data["components"]["demucs"]["settings"]["batch_size"]["value"] == 4
    setting = data["components"]["whisper"]["settings"]["model"]
    assert setting["source"] == "tier" and setting["reason"]
    ahead = data["separate_ahead"]  # the next song's Demucs beside this one's stages: the card holds both
    assert ahead["enabled"] is True and ahead["estimated_peak_mb"] <= data["vram_budget_mb"]
    human = run(runner, "optimize", "--assume-vram", "16")
    assert "HYPOTHETICAL" in human.stderr and human.stdout == ""
    assert "Batches" in human.stderr and "the next song's Demucs runs beside" in " ".join(human.stderr.split())


def test_optimize_vram_limit_plans_as_an_8gb_card(runner, fake_gpus):
    fake_gpus(rtx_5060_ti())
    data = json.loads(run(runner, "optimize", "--vram-limit", "8", "--json").stdout)
    assert data["tier"] == "8-12" and data["vram_limit"] == 8
    assert data["memory_fraction"] < 0.5
    assert data["separate_ahead"]["enabled"] is False and "over the" in data["separate_ahead"]["why"]


def test_optimize_save_stores_the_plan(runner, fake_gpus):
    fake_gpus(rtx_5060_ti())
    result = run(runner, "optimize", "--save", "--json")
    assert result.exit_code == 0
    saved = json.loads(result.stdout)["saved_config_ids"]
    assert set(saved) == {"whisper", "demucs", "crepe"}
    assert rows("SELECT COUNT(*) FROM component_config WHERE kind = 'plan' AND is_active") == [(3,)]
    assert rows("SELECT COUNT(*) FROM optimization_setting") == [(19,)]  # every parameter of every component


def test_optimize_never_imports_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from ultrasinger_gpu_cli.cli import app; "
        "r = CliRunner().invoke(app, ['optimize', '--json']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'whisper', 'demucs', 'torchcrepe', 'tensorflow') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_assume_gpu_without_assume_vram_is_refused(runner):
    result = run(runner, "optimize", "--assume-gpu", "RTX 4090")
    assert result.exit_code == 2 and "--assume-vram" in result.stderr


def test_bad_assume_cc_is_refused(runner):
    result = run(runner, "optimize", "--assume-vram", "8", "--assume-cc", "twelve")
    assert result.exit_code == 2 and "12.0" in result.stderr


def test_optimize_tiers_prints_the_table(runner):
    result = run(runner, "optimize", "--tiers")
    assert result.exit_code == 0 and "16-24 GB" in result.stderr and "aggressive" in result.stderr


# -- per-component configuration --------------------------------------------------------------
def test_component_show_save_reset_round_trip(runner, fake_gpus):
    fake_gpus(rtx_5060_ti())
    shown = json.loads(run(runner, "whisper", "--show", "--json").stdout)
    assert shown["model"] == "large-v3-turbo" and shown["settings"]["model"]["source"] == "tier"

    saved = run(runner, "whisper", "--model", "medium", "--batch-size", "8", "--device", "cpu", "--save", "--json")
    assert saved.exit_code == 0
    data = json.loads(saved.stdout)
    assert data["action"] == "saved" and data["device_override"] == "cpu"
    assert {k: v["source"] for k, v in data["settings"].items() if k != "compute_type"} == {
        "model": "override", "batch_size": "override", "device": "override", "backend": "tier", "beam_size": "tier",
    }  # fmt: skip

    # From now on every command honours it, shown with source "override".
    plan = json.loads(run(runner, "optimize", "--json").stdout)
    assert plan["optimization_applied"]["whisper"]["model"] == "medium"
    assert plan["components"]["whisper"]["settings"]["model"]["source"] == "override"

    reset = json.loads(run(runner, "whisper", "--reset", "--json").stdout)
    assert reset["action"] == "reset" and reset["stored_override"] == {}
    assert json.loads(run(runner, "optimize", "--json").stdout)["optimization_applied"]["whisper"]["model"] == (
        "large-v3-turbo"
    )


def test_component_flags_without_save_apply_once(runner):
    data = json.loads(run(runner, "crepe", "--step-size", "20", "--json").stdout)
    assert data["settings"]["step_size"] == {"value": 20, "reason": "20 ms set by a flag", "source": "flag"}
    # The no-GPU tier's SwiftF0 has a fixed 16 ms step: a step set by a flag takes CREPE, saying why.
    assert data["settings"]["backend"]["value"] == "torchcrepe" and "step_size 20" in data["settings"]["backend"]["reason"]
    again = json.loads(run(runner, "crepe", "--json").stdout)["settings"]
    assert (again["backend"]["value"], again["step_size"]["value"]) == ("swiftf0", 16)
    assert rows("SELECT COUNT(*) FROM component_config") == [(0,)]


@pytest.mark.parametrize(
    "args",
    [
        ["whisper", "--model", "huge", "--save"],
        ["whisper", "--batch-size", "0", "--save"],
        ["whisper", "--batch-size", "-3", "--save"],
        ["demucs", "--device", "gpu2", "--save"],
        ["demucs", "--overlap", "2", "--save"],
        ["demucs", "--chunk-size", "99999999", "--save"],
        ["crepe", "--model", "large", "--save"],
        ["crepe", "--mode", "ludicrous"],
        ["whisper", "--save"],
        ["whisper", "--save", "--reset", "--batch-size", "2"],
    ],
)
def test_invalid_component_values_exit_2_and_store_nothing(runner, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert rows("SELECT COUNT(*) FROM component_config") == [(0,)]


def test_invalid_choice_message_lists_valid_choices(runner):
    result = runner.invoke(app, ["demucs", "--device", "gpu2"])
    assert "cuda" in result.output and "cpu" in result.output
    result = runner.invoke(app, ["demucs", "--overlap", "2"])
    assert "0 to 0.9" in result.output


def test_reset_with_audio_is_refused(runner, tmp_path):
    result = run(runner, "whisper", str(tmp_path / "song.mp3"), "--reset")
    assert result.exit_code == 2 and "without AUDIO" in result.stderr


# -- stats -----------------------------------------------------------------------------------
def test_stats_empty_is_friendly(runner):
    result = run(runner, "stats")
    assert result.exit_code == 0 and "No performance data yet" in result.stderr
    assert json.loads(run(runner, "stats", "--json").stdout) == {"components": []}


def test_stats_reports_logged_runs(runner):
    with Store.open(os.environ["UGPU_DB"]) as store:
        for speed in (10.0, 20.0, 30.0):
            store.log_performance(component="demucs", device="cuda", processing_speed_multiplier=speed, vram_used_mb=4000)
    data = json.loads(run(runner, "stats", "--json").stdout)
    (demucs,) = data["components"]
    assert (demucs["runs"], demucs["median_speed_x"], demucs["best_speed_x"], demucs["peak_vram_mb"]) == (3, 20.0, 30.0, 4000)
    human = run(runner, "stats")
    assert "demucs" in human.stderr and "20.00x" in human.stderr
    assert run(runner, "stats", "--component", "nope").exit_code == 2


# -- the store at the CLI edge ----------------------------------------------------------------
def test_corrupt_database_gives_a_clear_error_naming_the_file(runner, tmp_path):
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"garbage" * 500)
    result = runner.invoke(app, ["--db", str(bad), "detect", "--json"])
    assert result.exit_code == 1
    assert str(bad) in result.stderr.replace("\n", "") and "Traceback" not in result.output
    assert result.stdout == ""
    assert bad.read_bytes() == b"garbage" * 500


def test_db_flag_overrides_the_environment(runner, tmp_path):
    target = tmp_path / "elsewhere.db"
    assert runner.invoke(app, ["--db", str(target), "optimize", "--save"]).exit_code == 0
    with Store.open(target) as store:
        assert store.query("SELECT COUNT(*) FROM component_config")[0][0] == 3


# -- the installed entry points ---------------------------------------------------------------
def test_python_dash_m_and_help_import_no_framework():
    code = (
        "import runpy, sys; sys.argv = ['ugpu', '--help']\n"
        "try:\n    runpy.run_module('ultrasinger_gpu_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'whisper', 'demucs', 'torchcrepe', 'tensorflow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout and out.stdout.strip().endswith("[]")
    direct = subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", "--version"], capture_output=True, text=True)
    assert direct.returncode == 0 and direct.stdout.startswith("ugpu ")


def test_stats_per_gpu_fallbacks_trend_and_csv_export(runner):
    with Store.open(os.environ["UGPU_DB"]) as store:
        for speed, vram in ((5.0, 4000), (6.0, 4200)):
            store.log_performance(component="whisper", device="cuda", gpu=GpuIdentity(0, "GPU-0"),
                                  processing_speed_multiplier=speed, vram_used_mb=vram)  # fmt: skip
        store.log_performance(component="whisper", device="cuda", gpu=GpuIdentity(1, "GPU-1"), processing_speed_multiplier=9.0)
        store.log_performance(component="whisper", device="cpu", processing_speed_multiplier=0.5)
        store.record_fallback(FallbackEvent("whisper", "cuda batch 32", "cuda batch 16", "out of memory", "s", "cuda",
                                            GpuIdentity(1, "GPU-1")), run_id=None)  # fmt: skip
    data = json.loads(run(runner, "stats", "--json").stdout)["components"]
    by_gpu = {c["gpu"]: c for c in data}
    assert set(by_gpu) == {"GPU 0", "GPU 1", "cpu"}
    assert by_gpu["GPU 0"]["speed_trend"] == [5.0, 6.0] and by_gpu["GPU 0"]["vram_trend"] == [4000, 4200]
    assert (by_gpu["GPU 0"]["fallbacks"], by_gpu["GPU 1"]["fallbacks"], by_gpu["cpu"]["fallbacks"]) == (0, 1, 0)
    only = json.loads(run(runner, "stats", "--json", "--gpu", "1").stdout)["components"]
    assert [c["gpu"] for c in only] == ["GPU 1"]
    csv_out = run(runner, "stats", "--export", "csv").stdout.splitlines()
    assert csv_out[0].startswith("log_id,gpu_id,vram_used_mb") and len(csv_out) == 5


def test_errors_print_brackets_verbatim(runner, env, tmp_path):
    """Messages and hints are text, never markup: "[live]" in a file name and "[server]" in an
    install command reach the user as written."""
    result = run(runner, "run", str(tmp_path / "Band - Song [live].mp3"), "-o", str(tmp_path / "o"))
    assert result.exit_code == 1 and "Song [live].mp3" in result.stderr


def test_while_the_next_song_is_separated_ahead_each_stage_line_names_its_song(tmp_path):
    import io

    from rich.console import Console

    from ultrasinger_gpu_cli.cli.run_view import RunDisplay
    from ultrasinger_gpu_cli.run import events as ev

    out = io.StringIO()

    def stage(name: str, shared: bool = False) -> ev.StageRun:
        return ev.StageRun(name, "b", "m", "cuda", 1.0, 10.0, peak_vram_mb=900, cuda_device="cuda:0", shared_card=shared)

    with RunDisplay(Console(file=out, width=200)) as display:
        for event in (ev.SongStarted("A.mp3", tmp_path / "A"), ev.StageStarted("A.mp3", "demucs"),
                      ev.StageFinished("A.mp3", stage("demucs")), ev.StageStarted("A.mp3", "whisper"),
                      ev.SongAhead("B.mp3", tmp_path / "B"), ev.StageStarted("B.mp3", "demucs"),
                      ev.StageFinished("B.mp3", stage("demucs", shared=True)),
                      ev.StageFinished("A.mp3", stage("whisper", shared=True)), ev.SongFinished("A.mp3", None),
                      ev.SongStarted("B.mp3", tmp_path / "B"), ev.StageStarted("B.mp3", "whisper"),
                      ev.StageFinished("B.mp3", stage("whisper"))):  # fmt: skip
            display(event)
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert lines[0].startswith("A.mp3 -> ") and lines[1] == "demucs: cuda:0, 1.0 s, 10.00x real time, peak VRAM 900 MB"
    assert lines[2] == ("demucs (B.mp3, ahead): cuda:0, 1.0 s, 10.00x real time, peak VRAM 900 MB (two songs' stages on "
                        "the card at once)")  # fmt: skip
    assert lines[3].startswith("whisper: cuda:0") and lines[3].endswith("(two songs' stages on the card at once)")
    assert lines[4].startswith("B.mp3 -> ") and lines[5].startswith("whisper: cuda:0") and len(lines) == 6


def test_songs_converted_at_once_name_their_song_on_each_stage_line_and_none_is_called_ahead(tmp_path):
    """CPU lanes and ``--gpus`` workers interleave two songs' events: a stage line of a song that is
    not the last one started names its song, and only a song separated ahead is said to be."""
    import io

    from rich.console import Console

    from ultrasinger_gpu_cli.cli.run_view import RunDisplay
    from ultrasinger_gpu_cli.run import events as ev

    out = io.StringIO()
    run_ = ev.StageRun("whisper", "b", "m", "cpu", 1.0, 10.0)
    with RunDisplay(Console(file=out, width=200)) as display:
        for event in (ev.SongStarted("A.mp3", tmp_path / "A"), ev.SongStarted("B.mp3", tmp_path / "B"),
                      ev.StageFinished("A.mp3", run_), ev.StageFinished("B.mp3", run_)):  # fmt: skip
            display(event)
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert lines[2] == "whisper (A.mp3): cpu, 1.0 s, 10.00x real time" and lines[3].startswith("whisper: cpu"), lines
