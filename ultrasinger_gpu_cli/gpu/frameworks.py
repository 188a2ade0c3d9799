"""What the installed deep-learning frameworks can do on this machine.

Importing torch or TensorFlow costs seconds, so the probe runs only for ``ugpu detect``
and its result is cached in the store under a :func:`fingerprint` of the installed
versions (read from package metadata, which is cheap). Nothing here is imported on the
``ugpu --help`` or ``ugpu optimize`` paths.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
import warnings

from ultrasinger_gpu_cli.gpu.facts import FrameworkInfo, GpuCompatibility, GpuInfo, TensorflowInfo, TorchInfo, sm_name

TORCH_INDEX = "https://download.pytorch.org/whl"

_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def _installed_version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def fingerprint(driver_version: str | None, gpu_count: int = 0) -> str:
    """Changes whenever a re-probe could give a different answer."""
    parts = [
        sys.executable,
        f"gpus={gpu_count}",
        f"torch={_installed_version('torch')}",
        f"tf={_installed_version('tensorflow', 'tensorflow-cpu', 'tf-nightly')}",
        f"driver={driver_version}",
        f"cvd={os.environ.get('CUDA_VISIBLE_DEVICES', '')}",
    ]
    return "|".join(parts)


def _torch_version_file() -> tuple[str | None, str | None]:
    """(version, CUDA build) from torch/version.py, without importing torch (which takes seconds)."""
    import ast

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    found: dict[str, str | None] = {}
    try:
        tree = ast.parse(open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")).read())
        for node in tree.body:
            if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(getattr(node, "value", None), ast.Constant):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        found[t.id] = node.value.value
    except (OSError, SyntaxError):
        return None, None
    return found.get("__version__"), found.get("cuda")


def probe_torch(gpu_present: bool = True) -> TorchInfo:
    """What the installed torch can do. Without an NVIDIA GPU only its version and build matter,
    and those are read without importing torch."""
    if importlib.util.find_spec("torch") is None:
        return TorchInfo(installed=False)
    if not gpu_present:
        version, cuda = _torch_version_file()
        if version:
            return TorchInfo(installed=True, version=version, cuda_build=cuda)
    caught: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            import torch

            cuda_available = bool(torch.cuda.is_available())
            count = torch.cuda.device_count() if cuda_available else 0
            arch_list = tuple(torch.cuda.get_arch_list()) if torch.version.cuda else ()
        caught = [str(r.message).strip() for r in records if "cuda" in str(r.message).lower()]
        return TorchInfo(
            installed=True,
            version=torch.__version__,
            cuda_build=torch.version.cuda,
            cuda_available=cuda_available,
            device_count=count,
            arch_list=arch_list,
            warnings=tuple(caught),
        )
    except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
        return TorchInfo(installed=True, version=_installed_version("torch"), error=f"{type(exc).__name__}: {exc}")


#: What the TensorFlow probe runs in its own process: TensorFlow's C++ logging (absl, oneDNN) writes
#: to the process's stderr while it loads, before any Python setting can stop it.
_TF_PROBE = """
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
build = tf.sysconfig.get_build_info() or {}
print(json.dumps({"version": tf.__version__, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                  "ccs": [str(c) for c in build.get("cuda_compute_capabilities") or ()]}))
"""
TF_PROBE_TIMEOUT_S = 120.0


def probe_tensorflow(gpu_present: bool = True) -> TensorflowInfo:
    """What the installed TensorFlow can do. Without an NVIDIA GPU only its version matters, read
    without importing it; with one, it is imported in a child process (seconds, once: detection
    caches the answer), so its log lines never reach the user's terminal."""
    import subprocess

    if importlib.util.find_spec("tensorflow") is None:
        return TensorflowInfo(installed=False)
    version = _installed_version("tensorflow", "tensorflow-cpu", "tf-nightly")
    if not gpu_present:
        return TensorflowInfo(installed=True, version=version)
    try:
        done = subprocess.run([sys.executable, "-c", _TF_PROBE], capture_output=True, text=True,
                              timeout=TF_PROBE_TIMEOUT_S, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return TensorflowInfo(installed=True, version=version, error=f"{type(exc).__name__}: {exc}")
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return TensorflowInfo(installed=True, version=version, error=f"importing tensorflow failed: {last}")
    return TensorflowInfo(installed=True, version=str(found.get("version") or version),
                          gpus=tuple(map(str, found.get("gpus") or ())),
                          cuda_compute_capabilities=tuple(map(str, found.get("ccs") or ())))  # fmt: skip


def probe_frameworks(gpu_present: bool = True) -> FrameworkInfo:
    return FrameworkInfo(torch=probe_torch(gpu_present), tensorflow=probe_tensorflow(gpu_present), probed_at=time.time())


def _parse_arch(entry: str) -> tuple[str, int, int, str] | None:
    match = _ARCH.match(entry.strip())
    if not match:
        return None
    kind, digits, suffix = match.groups()
    return kind, int(digits[:-1] or 0), int(digits[-1]), suffix


def arch_supports(arch_list: tuple[str, ...] | list[str], compute_capability: str) -> bool:
    """Does a build compiled for ``arch_list`` run on a card of ``compute_capability``?

    A cubin ``sm_XY`` runs on the same major version with a minor >= Y (``sm_80`` runs on
    8.6 and 8.9; ``sm_90a``-style arch-specific cubins only on exactly 9.0); PTX
    ``compute_XY`` is JIT-compiled for any card >= X.Y. ``sm_100`` does not run on 12.0.
    """
    major_s, _, minor_s = compute_capability.partition(".")
    major, minor = int(major_s), int(minor_s or 0)
    for entry in arch_list:
        parsed = _parse_arch(entry)
        if parsed is None:
            continue
        kind, a_major, a_minor, suffix = parsed
        if kind == "sm":
            if suffix and (a_major, a_minor) == (major, minor):
                return True
            if not suffix and a_major == major and a_minor <= minor:
                return True
        elif (a_major, a_minor) <= (major, minor):
            return True
    return False


def _version_tuple(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 0)
    nums = re.findall(r"\d+", text)
    return (int(nums[0]), int(nums[1]) if len(nums) > 1 else 0) if nums else (0, 0)


def recommended_torch_build(compute_capability: str | None, cuda_driver_version: str | None) -> tuple[str | None, str]:
    """The PyTorch wheel index (cuXYZ) that runs this card under this driver, and why.

    Returns ``(None, reason)`` when the driver is too old for any build that has kernels
    for the card: then the driver comes first.
    """
    cc = _version_tuple(compute_capability)
    driver = _version_tuple(cuda_driver_version)
    if cc >= (10, 0):  # Blackwell (sm_100, sm_120): CUDA 12.8 or newer
        if driver >= (13, 0):
            return "cu130", "Blackwell cards need a CUDA 12.8+ build; this driver supports CUDA 13"
        if driver >= (12, 8) or driver == (0, 0):
            return "cu128", "Blackwell cards need a CUDA 12.8+ build (PyTorch 2.7 or newer)"
        return None, (
            f"the driver supports CUDA {cuda_driver_version} only; Blackwell cards need a driver "
            "with CUDA 12.8 or newer (driver 570+) before any PyTorch build can use them"
        )
    if cc and cc < (7, 5):  # Maxwell/Pascal/Volta: dropped from the CUDA 12.8+ builds
        return "cu126", "cards older than Turing (sm_75) are dropped from PyTorch's CUDA 12.8+ builds"
    if driver and driver < (12, 6):
        return "cu118", f"the driver supports CUDA {cuda_driver_version}; the cu118 build runs on it"
    return "cu126", "PyTorch's default CUDA build runs this card"


def torch_install_command(build: str) -> str:
    return f"pip install --upgrade --force-reinstall torch --index-url {TORCH_INDEX}/{build}"


def check_compatibility(gpu: GpuInfo, torch: TorchInfo, cuda_driver_version: str | None) -> GpuCompatibility:
    """Whether the installed PyTorch can run ``gpu``, in plain words, with the fix."""
    sm = gpu.sm
    if gpu.lost:
        return GpuCompatibility(gpu.index, sm, None, "the GPU was lost during detection")
    build, why = recommended_torch_build(gpu.compute_capability, cuda_driver_version)
    fix = torch_install_command(build) if build else None
    if not torch.installed:
        return GpuCompatibility(gpu.index, sm, None, f"PyTorch is not installed; {why}", fix)
    if torch.error:
        return GpuCompatibility(gpu.index, sm, False, f"PyTorch {torch.version} fails to import: {torch.error}", fix)
    if not torch.cuda_build:
        return GpuCompatibility(
            gpu.index, sm, False, f"PyTorch {torch.version} is a CPU-only build: it cannot use any GPU; {why}", fix
        )
    if not gpu.compute_capability:
        return GpuCompatibility(gpu.index, sm, None, "the driver does not report this card's compute capability")
    if not arch_supports(torch.arch_list, gpu.compute_capability):
        archs = " ".join(torch.arch_list) or "none"
        return GpuCompatibility(
            gpu.index,
            sm,
            False,
            f"PyTorch {torch.version} (CUDA {torch.cuda_build}) has no kernels for {sm} "
            f"(it was built for: {archs}); {why}",
            fix,
        )
    if not torch.cuda_available:
        return GpuCompatibility(
            gpu.index,
            sm,
            False,
            f"PyTorch {torch.version} supports {sm} but cannot initialise CUDA "
            f"(driver CUDA {cuda_driver_version or 'n/a'}, build CUDA {torch.cuda_build})",
            fix,
        )
    return GpuCompatibility(gpu.index, sm, True, f"PyTorch {torch.version} (CUDA {torch.cuda_build}) runs {sm}")


def tensorflow_gpu_problem(compute_capability: str | None) -> str | None:
    """Why CREPE's tensorflow backend cannot run a card of this compute capability, or None where
    it may (whether the installed TensorFlow sees the card is checked when the engine loads; a
    GPU it cannot see moves the stage to the CPU through the fallback ladder). Cheap: reads
    package metadata, never imports TensorFlow."""
    cc = _version_tuple(compute_capability)
    if cc >= (10, 0):
        return (f"no TensorFlow release has kernels for {sm_name(compute_capability)} (Blackwell); "
                "torchcrepe runs CREPE on this card with the same weights")
    if _installed_version("tensorflow-cpu") and not _installed_version("tensorflow"):
        return "the installed TensorFlow is tensorflow-cpu, a CPU-only build"
    if sys.platform == "win32":
        return "TensorFlow has no GPU support on native Windows since 2.11"
    return None


def tensorflow_note(gpu: GpuInfo, tf: TensorflowInfo) -> str | None:
    """What TensorFlow means for CREPE on this card, or None when TF is not installed."""
    if not tf.installed:
        return None
    problem = tensorflow_gpu_problem(gpu.compute_capability)
    if problem:
        return f"TensorFlow {tf.version}: {problem}; CREPE's tensorflow backend runs on the CPU here"
    if not tf.gpus:
        return f"TensorFlow {tf.version} sees no GPU: CREPE's tensorflow backend would run on the CPU"
    return (f"TensorFlow {tf.version} sees {len(tf.gpus)} GPU(s): CREPE's tensorflow backend can run here "
            "(--pitch-backend tensorflow); the default is torchcrepe")
