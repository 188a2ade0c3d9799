"""Can the installed PyTorch run this card, and what fixes it."""

from __future__ import annotations

import pytest

from tests.conftest import CU126_ARCHS, CU128_ARCHS
from ultrasinger_gpu_cli.gpu.facts import GpuInfo, TensorflowInfo, TorchInfo
from ultrasinger_gpu_cli.gpu.frameworks import (
    arch_supports,
    check_compatibility,
    probe_torch,
    recommended_torch_build,
    tensorflow_note,
)


@pytest.mark.parametrize(
    ("archs", "cc", "ok"),
    [
        (CU126_ARCHS, "12.0", False),  # the RTX 50 problem
        (CU128_ARCHS, "12.0", True),
        (CU126_ARCHS, "9.0", True),
        (CU126_ARCHS, "8.9", True),  # sm_86 cubins run on 8.9
        (("sm_100",), "12.0", False),  # another major version
        (("sm_90a",), "9.0", True),
        (("sm_90a",), "9.1", False),  # arch-specific cubins run only on exactly that card
        (("sm_80", "compute_80"), "12.0", True),  # PTX is JIT-compiled forward
        (("sm_75",), "7.0", False),
        ((), "8.6", False),
    ],
)
def test_arch_supports(archs, cc, ok):
    assert arch_supports(archs, cc) is ok


@pytest.mark.parametrize(
    ("cc", "driver", "build"),
    [("12.0", "12.9", "cu128"), ("12.0", "13.0", "cu130"), ("12.0", "12.4", None), ("6.1", "12.9", "cu126"),
     ("8.6", "12.9", "cu126"), ("8.6", "11.8", "cu118")],
)  # fmt: skip
def test_recommended_build(cc, driver, build):
    assert recommended_torch_build(cc, driver)[0] == build


def _gpu(cc="12.0") -> GpuInfo:
    return GpuInfo(index=0, name="NVIDIA GeForce RTX 5060 Ti", uuid="GPU-x", vram_total_mb=16311, compute_capability=cc)


def test_rtx_5060_ti_with_a_cu126_torch_is_refused_with_the_exact_fix():
    torch = TorchInfo(installed=True, version="2.6.0+cu126", cuda_build="12.6", cuda_available=True, arch_list=CU126_ARCHS)
    verdict = check_compatibility(_gpu(), torch, "12.9")
    assert verdict.torch_can_run is False
    assert "sm_120" in verdict.reason
    assert verdict.fix_command == (
        "pip install --upgrade --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128"
    )


def test_cu128_torch_runs_the_rtx_5060_ti():
    torch = TorchInfo(installed=True, version="2.8.0+cu128", cuda_build="12.8", cuda_available=True, arch_list=CU128_ARCHS)
    assert check_compatibility(_gpu(), torch, "12.9").torch_can_run is True


def test_cpu_only_torch_and_missing_torch():
    cpu = TorchInfo(installed=True, version="2.13.0+cpu", cuda_build=None)
    verdict = check_compatibility(_gpu("8.6"), cpu, "12.9")
    assert verdict.torch_can_run is False and "CPU-only" in verdict.reason and verdict.fix_command
    missing = check_compatibility(_gpu(), TorchInfo(installed=False), "12.9")
    assert missing.torch_can_run is None and "not installed" in missing.reason


def test_tensorflow_note_for_blackwell_says_crepe_runs_on_pytorch():
    tf = TensorflowInfo(installed=True, version="2.21.0", gpus=())
    assert "torchcrepe" in tensorflow_note(_gpu(), tf)
    assert tensorflow_note(_gpu(), TensorflowInfo(installed=False)) is None


def test_real_torch_probe_on_this_machine():
    without_gpu = probe_torch(gpu_present=False)  # read from torch/version.py, no import
    info = probe_torch()
    if not info.installed:  # pragma: no cover - make test installs the CPU build
        pytest.skip("torch not installed")
    assert info.error is None
    assert info.version
    assert info.cuda_available is False or info.cuda_build is not None
    assert (without_gpu.version, without_gpu.cuda_build) == (info.version, info.cuda_build)


# -- the TensorFlow probe (issue 22: no framework log lines, detect fast) ---------------------------------
def _child(code: str, **env: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})  # fmt: skip


def test_without_a_gpu_tensorflow_is_not_imported_to_learn_its_version():
    done = _child("import sys\nfrom ultrasinger_gpu_cli.gpu.frameworks import probe_tensorflow\n"
                  "info = probe_tensorflow(gpu_present=False)\n"
                  "print(info.installed, info.version, 'tensorflow' in sys.modules)")  # fmt: skip
    installed, version, imported = done.stdout.split()
    assert done.returncode == 0 and imported == "False"
    assert installed == "True" and version[0].isdigit()  # `make install` installs tensorflow-cpu


def test_with_a_gpu_tensorflow_is_probed_in_a_child_and_its_log_lines_stay_there():
    # TensorFlow's C++ logging writes absl/oneDNN lines to stderr while it loads, whatever
    # TF_CPP_MIN_LOG_LEVEL the parent set: the probe's own process keeps them.
    done = _child("import sys\nfrom ultrasinger_gpu_cli.gpu.frameworks import probe_tensorflow\n"
                  "info = probe_tensorflow(gpu_present=True)\n"
                  "print(info.version, info.error, 'tensorflow' in sys.modules)", TF_CPP_MIN_LOG_LEVEL="0")  # fmt: skip
    version, error, imported = done.stdout.split()
    assert done.returncode == 0 and version[0].isdigit() and error == "None" and imported == "False"
    assert done.stderr == ""


def test_a_tensorflow_that_fails_to_import_is_a_finding_not_a_crash(tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.gpu import frameworks

    broken = tmp_path / "tensorflow"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    info = frameworks.probe_tensorflow(gpu_present=True)
    assert info.installed and "libcudart.so.12" in (info.error or "")


def test_cold_detect_prints_no_framework_log_lines(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    ugpu = Path(sys.executable).with_name("ugpu")
    done = subprocess.run([str(ugpu), "detect"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "UGPU_DB": str(tmp_path / "fresh.db"), "TF_CPP_MIN_LOG_LEVEL": "0"})  # fmt: skip
    assert done.returncode == 0
    assert not [line for line in done.stderr.splitlines() if "absl" in line or "oneDNN" in line or line.startswith(("I0000", "W0000"))]
