"""Shared fixtures: a private data dir per test, fake NVML cards, fake framework probes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fake_nvml import FakeCard, make_fake_nvml
from ultrasinger_gpu_cli.gpu import frameworks, nvml
from ultrasinger_gpu_cli.gpu.facts import TensorflowInfo, TorchInfo

#: What a PyTorch cu126 build reports: no sm_120, so it cannot run an RTX 5060 Ti.
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
#: A cu128 build: Blackwell included.
CU128_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path, monkeypatch) -> Iterator[None]:
    """Every test gets its own database and home; the real home directory is never touched."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("UGPU_DB", str(tmp_path / "ugpu.db"))
    monkeypatch.setenv("UGPU_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("UGPU_OFFLINE", "1")  # no test reaches the internet; the download tests use loopback
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml.use_backend(None)
    yield
    nvml.use_backend(None)


@pytest.fixture
def fake_gpus() -> Callable[..., object]:
    """Install a fake NVML with the given cards: ``fake_gpus(rtx_5060_ti(), h100())``."""

    def install(*cards: FakeCard, **kwargs):
        module = make_fake_nvml(list(cards), **kwargs)
        nvml.use_backend(module)
        return module

    return install


@pytest.fixture
def fake_torch(monkeypatch) -> Callable[..., TorchInfo]:
    """Make the framework probe report a CUDA torch build with the given arch list."""

    def install(arch_list=CU126_ARCHS, cuda_build="12.6", version="2.7.1+cu126", cuda_available=True):
        info = TorchInfo(
            installed=True, version=version, cuda_build=cuda_build, cuda_available=cuda_available,
            device_count=1 if cuda_available else 0, arch_list=tuple(arch_list),
        )  # fmt: skip
        monkeypatch.setattr(frameworks, "probe_torch", lambda gpu_present=True: info)
        monkeypatch.setattr(frameworks, "probe_tensorflow", lambda gpu_present=True: TensorflowInfo(installed=False))
        return info

    return install


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A ``--models-dir`` with small random-weight models of the real architectures."""
    from tests.model_factory import build_models_dir

    return build_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def fast_whisper(monkeypatch):
    """Random weights decode to the token limit: cap it and fix the temperature (as benchmarks do)."""
    from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine

    monkeypatch.setattr(WhisperEngine, "sample_len", 6)
    monkeypatch.setattr(WhisperEngine, "temperatures", (0.0,))
    monkeypatch.setattr(WhisperEngine, "compression_ratio_threshold", None)
    monkeypatch.setattr(WhisperEngine, "no_speech_threshold", None)
    return WhisperEngine


#: Four short notes (start s, length s, MIDI) the reliability tests sing and time.
SHORT_NOTES = [(0.5, 0.6, 60), (1.3, 0.6, 64), (2.1, 0.8, 67), (3.2, 0.6, 65)]


@pytest.fixture
def env(models_dir, monkeypatch):
    """The small local models as ugpu's models folder."""
    monkeypatch.setenv("UGPU_MODELS", str(models_dir))
    return models_dir


@pytest.fixture
def words(tmp_path):
    """Word timings for :data:`SHORT_NOTES`, as a words JSON for ``--timings``."""
    import json

    path = tmp_path / "words.json"
    path.write_text(json.dumps([{"word": f"la{i}", "start": s, "end": s + n} for i, (s, n, _) in enumerate(SHORT_NOTES)]))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (2 CPUs, 2 declared GPUs): starting Ray twice in one
    process on a busy 2-core machine can time out. It starts before any test's private data dir:
    ugpu hands its actors the test's database and models folder explicitly."""
    ray = pytest.importorskip("ray", reason="the [cluster] extra (make test installs it)")
    from ultrasinger_gpu_cli.usecases.cluster import NAMESPACE

    ray.init(num_cpus=2, num_gpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    yield ray
    ray.shutdown()
