"""Pitch backends (issue 10): SwiftF0 with its shipped model, chosen by the plan on the CPU tier,
selectable everywhere, refused with the valid choices where it can't run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.audio_factory import melody, midi_to_hz, sung_note, write_wav
from tests.test_pipeline import NOTES, _known_melody, _notes_in
from ultrasinger_gpu_cli.gpu import devices
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.components import CREPE
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity
from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

RTX_5060_TI = PlanTarget("NVIDIA GeForce RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-5060ti"), torch_can_run=True)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _swiftf0():
    engine = CREPE.create(CREPE.defaults(backend="swiftf0", model="swiftf0", step_size=16), None, devices.DeviceBinding.cpu())
    engine.load()
    return engine


def _cents(freq: np.ndarray, midi: float) -> np.ndarray:
    return 1200 * np.log2(freq / midi_to_hz(midi))


def test_swiftf0_gets_a_tone_right_within_25_cents():
    engine = _swiftf0()
    tone = np.concatenate([np.zeros(8000, np.float32), sung_note(220.0, 1.5, 16_000), np.zeros(8000, np.float32)])
    track = engine.run(tone, gate=False)
    voiced = (track.confidence >= 0.5) & (track.times > 0.7) & (track.times < 1.8)
    assert voiced.sum() > 50 and track.step_ms == 16
    assert np.abs(np.median(_cents(track.frequency[voiced], 57))) <= 25
    silent = track.times < 0.4
    assert (track.confidence[silent] < 0.5).all()


def test_swiftf0_runs_on_the_threads_the_process_may_use(monkeypatch):
    """A CPU lane's share of the cores (``OMP_NUM_THREADS``, which onnxruntime itself ignores)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _swiftf0()._model.session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert _swiftf0()._model.session.get_session_options().intra_op_num_threads == 2


def test_swiftf0_gets_every_note_of_the_known_melody_within_25_cents():
    engine = _swiftf0()
    track = engine.run(melody(NOTES, 17.0, 16_000), gate=False)
    for start, length, midi in NOTES:
        inside = (track.times >= start + 0.05) & (track.times < start + length - 0.05) & (track.confidence >= 0.5)
        assert inside.sum() >= 5, (start, midi)
        assert abs(np.median(_cents(track.frequency[inside], midi))) <= 25, (start, midi)


def test_swiftf0_gates_like_crepe_outside_the_regions():
    engine = _swiftf0()
    track = engine.run(melody(NOTES[:3], 4.0, 16_000), regions=[(0.9, 1.7)])
    assert track.computed[(track.times > 1.0) & (track.times < 1.6)].all()
    assert not track.computed[track.times > 1.8].any() and (track.frequency[track.times > 1.8] == 0).all()


@pytest.mark.parametrize("backend", ["swiftf0", "torchcrepe", "tensorflow"])
def test_known_melody_through_the_pipeline_with_each_pitch_backend(env, tmp_path, backend):
    vocals, timings = _known_melody(tmp_path)
    args = ["run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"), "--json"]
    result = invoke(*args, "--pitch-backend", backend)
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    (stage,) = [s for s in report["stages"] if s["stage"] == "crepe"]
    assert stage["backend"] == backend and stage["settings"]["backend"] == backend
    beat_s, _, found = _notes_in(Path(report["files"]["ultrastar"]))
    good = sum(1 for (start, midi), (t, _, m) in zip(found, NOTES) if midi == m and abs(start - t) <= beat_s)
    assert len(found) == len(NOTES) and good / len(NOTES) >= 0.95


def test_the_cpu_tier_plans_swiftf0_and_gpus_keep_crepe_full():
    cpu = resolve(PlanTarget("CPU: test")).components["crepe"]
    assert cpu.value("backend") == "swiftf0" and cpu.value("model") == "swiftf0" and cpu.value("step_size") == 16
    assert "20x faster" in cpu.settings["backend"].reason and "16 ms" in cpu.settings["step_size"].reason
    gpu = resolve(RTX_5060_TI).components["crepe"]
    assert (gpu.value("backend"), gpu.value("model"), gpu.value("device")) == ("torchcrepe", "full", "cuda")


def test_swiftf0_asked_for_on_a_gpu_runs_on_the_cpu_and_says_why():
    plan = resolve(RTX_5060_TI, flags={"crepe": {"backend": "swiftf0"}}).components["crepe"]
    assert (plan.value("device"), plan.value("model")) == ("cpu", "swiftf0")
    assert "cpu only" in plan.settings["device"].reason and plan.settings["device"].source == "hardware"
    assert plan.estimated_vram_mb is None


def test_a_model_the_backend_cannot_run_is_refused():
    with pytest.raises(InvalidSettingError, match="swiftf0 backend does not run the crepe model 'full'"):
        resolve(RTX_5060_TI, flags={"crepe": {"backend": "swiftf0", "model": "full"}})
    with pytest.raises(InvalidSettingError, match="its models: full, tiny"):
        CREPE.defaults(backend="torchcrepe", model="swiftf0")


def test_bad_and_missing_backends_are_refused_with_the_choices_and_the_install_command(env, tmp_path, monkeypatch):
    vocals, timings = _known_melody(tmp_path)
    base = ["run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "o")]
    bad = invoke(*base, "--pitch-backend", "nope")
    assert bad.exit_code == 2 and "torchcrepe, swiftf0" in bad.stderr
    wrong = invoke("crepe", str(vocals), "--backend", "swiftf0", "--model", "full")
    assert wrong.exit_code == 2 and "its models: swiftf0" in wrong.stderr and "Traceback" not in wrong.output
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "swift_f0" else real(name, *a))
    missing = invoke(*base, "--pitch-backend", "swiftf0")
    assert missing.exit_code == 2 and "pip install swift-f0" in missing.stderr
    assert not (tmp_path / "o" / "Known - Melody").exists()
    # Not installed, the CPU tier keeps torchcrepe (and says so by its reason).
    from ultrasinger_gpu_cli.plan.resolver import resolve as plan

    assert plan(PlanTarget("CPU: test")).components["crepe"].value("backend") == "torchcrepe"


def test_every_pitch_backend_is_listed(env):
    result = invoke("models", "list", "--json")
    assert result.exit_code == 0
    listed = {(b["component"], b["backend"]) for b in json.loads(result.stdout)["backends"]}
    assert {("crepe", "torchcrepe"), ("crepe", "swiftf0")} <= listed
    (crepe,) = [m for m in json.loads(result.stdout)["models"] if m["engine"] == "crepe"]
    assert crepe["backend"] == "swiftf0" and crepe["present"]


def test_swiftf0_writes_crepes_csv(env, tmp_path):
    vocals = write_wav(tmp_path / "v.wav", melody(NOTES[:3], 4.0, 44_100)[None], 44_100)
    result = invoke("crepe", str(vocals), "--backend", "swiftf0", "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    csv = next((tmp_path / "out").rglob("*.csv")).read_text().splitlines()
    assert csv[0] == "time,frequency,confidence" and csv[2].startswith("0.016,")


def test_swiftf0_on_the_voiced_stretches_equals_the_whole_song_there():
    engine = _swiftf0()
    audio = melody(NOTES[:3] + NOTES[8:10], 12.0, 16_000)  # voice, 5 s of silence, voice, silence
    whole = engine.run(audio, gate=False)
    gated = engine.run(audio)  # the energy gate: only the notes, with context around them
    assert 0 < gated.computed.sum() < 0.6 * len(gated.computed)
    on = gated.computed
    assert np.allclose(gated.frequency[on], whole.frequency[on], rtol=1e-5, atol=1e-3)
    assert np.allclose(gated.confidence[on], whole.confidence[on], atol=1e-5)
