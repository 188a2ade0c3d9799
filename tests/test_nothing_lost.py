"""Nothing lost, same result every time: one test per class of fault a hostile user found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import SHORT_NOTES
from tests.audio_factory import melody, song, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
NOTES = SHORT_NOTES


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def db_rows(sql: str, params: tuple = ()) -> list[dict]:
    with Store.open(os.environ["UGPU_DB"]) as store:
        return [dict(r) for r in store.query(sql, params)]


# -- 1. silent overwrite ---------------------------------------------------------------------------------
def test_two_songs_with_one_name_get_two_folders_and_a_rerun_is_deliberate(env, words, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_wav(tmp_path / "a" / "song.wav", melody(NOTES, 4.5, 44_100)[None], 44_100)
    b = write_wav(tmp_path / "b" / "song.wav", melody([(s, n, m + 2) for s, n, m in NOTES], 4.5, 44_100)[None], 44_100)
    out = tmp_path / "out"
    first = invoke("run", str(a), str(b), "--no-separation", "--timings", str(words), "-o", str(out), "--json")
    assert first.exit_code == 0, first.output
    assert f"note: --timings {words} gives the same words to all 2 songs" in " ".join(first.stderr.split())
    folders = [Path(s["folder"]) for s in json.loads(first.stdout)["songs"]]
    # (on the CPU the two may be converted at once: which one claims the plain name first is a race)
    assert sorted(f.name for f in folders) == ["Unknown Artist - song", "Unknown Artist - song (2)"]
    charts = {f: (f / f"{f.name}.txt").read_text() for f in folders}
    assert charts[folders[0]] != charts[folders[1]]  # b's notes are two semitones up: nothing was mixed

    again = invoke("run", str(a), "--no-separation", "--timings", str(words), "-o", str(out), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["songs"] == []
    assert "already converted" in again.stderr and "--overwrite" in again.stderr
    (folders[0] / "stale.txt").write_text("the user's own file")
    redo = invoke("run", str(a), "--no-separation", "--timings", str(words), "-o", str(out), "--json", "--overwrite")
    assert redo.exit_code == 0 and Path(json.loads(redo.stdout)["songs"][0]["folder"]) == folders[0]
    assert (folders[0] / "stale.txt").exists() and (folders[1] / f"{folders[1].name}.txt").read_text() == charts[folders[1]]


def test_a_folder_that_is_not_this_songs_is_never_written_into(env, words, tmp_path):
    source = write_wav(tmp_path / "Band - Tune.wav", melody(NOTES, 4.5, 44_100)[None], 44_100)
    taken = tmp_path / "out" / "Band - Tune"
    taken.mkdir(parents=True)
    (taken / "Band - Tune [Vocals].wav").write_bytes(b"another song's stem")
    result = invoke("run", str(source), "--no-separation", "--timings", str(words), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)["songs"][0]["folder"]).name == "Band - Tune (2)"
    assert (taken / "Band - Tune [Vocals].wav").read_bytes() == b"another song's stem" and len(list(taken.iterdir())) == 1


# -- 2. SIGTERM and other deaths -------------------------------------------------------------------------
def _ugpu(*args: str) -> subprocess.Popen:
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_is_ctrl_c_and_the_next_run_sweeps_what_a_kill_left(env, words, tmp_path):
    sources = [str(write_wav(tmp_path / f"Long - Song {n}.wav", song(60.0 + n), 44_100)) for n in range(3)]
    proc = _ugpu("run", *sources, "--timings", str(words), "-o", str(tmp_path / "out"))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if Path(os.environ["UGPU_DB"]).exists() and db_rows("SELECT stage FROM runs WHERE stage IS NOT NULL"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    statuses = [r["status"] for r in db_rows("SELECT status FROM runs")]
    assert statuses and set(statuses) == {"interrupted"}, statuses  # the run's, or each CPU lane's

    # A kill -9 leaves a half-written file and a run marked running: the next start cleans both.
    folder = tmp_path / "out" / "Long - Song 0"
    folder.mkdir(parents=True, exist_ok=True)
    ghost = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stale = folder / f".Long - Song 0.txt.partial-{ghost.pid}-{ghost.pid + 1}"  # (PID and thread)
    stale.write_text("half")
    older = folder / f".Long - Song 0.mid.partial-{ghost.pid}"  # an earlier version's name
    older.write_text("half")
    with Store.open(os.environ["UGPU_DB"]) as store:
        store.start_run("ghost", mode="balanced", gpu=None, pid=ghost.pid, pid_started=time.time() - 3600)  # PID reused
        store.start_run("killed", mode="balanced", gpu=None, pid=ghost.pid, pid_started=None)
    ghost.kill()
    ghost.wait()
    done = invoke("run", sources[0], "--timings", str(words), "-o", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    assert not stale.exists() and not older.exists()
    statuses = {r["run_id"]: r["status"] for r in db_rows("SELECT run_id, status FROM runs")}
    assert statuses["ghost"] == "interrupted" and statuses["killed"] == "interrupted"


def test_two_threads_writing_one_file_at_once_both_finish_it(tmp_path):
    """A server's workers are threads of one process: two jobs of the same song write the same
    resume-cache entry at once (seen: the second job failed with "cannot write .../cache/...").
    Each writes its own partial file; the file is one of theirs, whole."""
    import threading

    from ultrasinger_gpu_cli.files import atomic_path

    target = tmp_path / "cache" / "entry.bin"
    both_open = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(content: bytes) -> None:
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(content[:10])
                    both_open.wait(10)  # both partial files open before either is renamed
                    fh.write(content[10:])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(bytes([k]) * 100_000,)) for k in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert target.read_bytes() in (b"\x01" * 100_000, b"\x02" * 100_000)
    assert [p.name for p in target.parent.iterdir()] == ["entry.bin"]


# -- 3. resume gives the same result --------------------------------------------------------------------------
@pytest.fixture
def random_stage(fast_whisper):
    """A CREPE backend whose pitch depends on torch's random generator, registered like a real one:
    a song's chart then depends on what ran before it, unless every stage is seeded from the song."""
    from tests import backends
    from ultrasinger_gpu_cli.components import CREPE

    CREPE.register("test-noisy", backends.NOISY)
    yield
    CREPE.backends.pop("test-noisy", None)


def test_a_song_gives_the_same_chart_alone_after_another_song_and_after_a_resume(env, random_stage, words, tmp_path):
    assert invoke("crepe", "--backend", "test-noisy", "--save").exit_code == 0
    target = write_wav(tmp_path / "Band - Target.wav", song(10.0), 44_100)
    other = write_wav(tmp_path / "Band - Other.wav", song(9.0), 44_100)
    charts = []
    for n, songs in enumerate(([target], [other, target])):
        out = tmp_path / f"out{n}"
        result = invoke("run", *map(str, songs), "--timings", str(words), "-o", str(out), "--lanes", "1")  # one process
        assert result.exit_code == 0, result.output
        charts.append((out / "Band - Target" / "Band - Target.txt").read_text())
        import torch

        torch.manual_seed(n + 100)  # whatever else ran in the process leaves the generator elsewhere
    # A resume: Demucs' result from the cache (the state a kill after Demucs leaves), the rest computed again.
    cache = Path(os.environ["UGPU_DB"]).parent / "cache"
    for entry in cache.iterdir():  # keep only Demucs' result (its entry and its stems)
        if entry.suffix == ".json" or (entry.suffix == ".npz" and "vocals16" not in np.load(entry).files):
            entry.unlink()
    resumed = invoke("run", str(target), "--timings", str(words), "-o", str(tmp_path / "out2"), "--json")
    stages = json.loads(resumed.stdout)["songs"][0]["stages"]
    assert stages[0]["cached"] is True and not stages[1]["cached"] and stages[1]["backend"] == "test-noisy"
    charts.append((tmp_path / "out2" / "Band - Target" / "Band - Target.txt").read_text())
    assert charts[0] == charts[1] == charts[2]
    assert sum(line[:1] in ":*F" for line in charts[0].splitlines()) > 0


# -- 4. file names ffmpeg would read as protocols ------------------------------------------------------------
@pytest.mark.parametrize("name", ["pipe:0", "http:x.wav", "concat:a.wav|b.wav", "subfile,,start,0,end,0,,:x.wav",
                                  "file:x.wav", "-i.wav"])  # fmt: skip
def test_names_that_look_like_ffmpeg_protocols_are_plain_files(tmp_path, monkeypatch, name):
    from ultrasinger_gpu_cli.song.audio import decode
    from ultrasinger_gpu_cli.song.tags import read_tags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"not this one")
    import soundfile

    path = tmp_path / name
    soundfile.write(str(path), melody([(0.1, 0.5, 69)], 1.0, 16_000), 16_000, format="WAV")
    audio = decode(Path(name), 16_000, 1)
    assert audio.samples.shape == (1, 16_000) and np.abs(audio.samples).max() > 0.1
    assert audio.source == Path(name) and path.exists()
    assert read_tags(Path(name)) == {}


# -- 5. bad samples -------------------------------------------------------------------------------------------
def test_nan_and_inf_samples_are_replaced_and_said_before_any_model_sees_them(env, words, tmp_path):
    samples = melody(NOTES, 4.5, 44_100)[None].copy()
    samples[0, 10_000:14_410] = np.nan  # 0.1 s of NaN
    samples[0, 20_000:20_100] = np.inf
    source = tmp_path / "Bad - Samples.wav"
    import soundfile

    soundfile.write(str(source), samples.T, 44_100, subtype="FLOAT")
    result = invoke("run", str(source), "--timings", str(words), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert "were not numbers (NaN or infinite) and were replaced by silence" in " ".join(result.stderr.split())
    report = json.loads(result.stdout)["songs"][0]
    assert report["notes"] > 0 and "no vocals found" not in result.stderr
    import soundfile as sf

    vocals, _ = sf.read(report["files"]["vocals"])
    assert np.isfinite(vocals).all() and np.abs(vocals).max() > 0.01  # not a silent stem


# -- 8. exports that are safe to open -------------------------------------------------------------------------
def test_csv_export_neutralises_formulas():
    with Store.open(os.environ["UGPU_DB"]) as store:
        for name in ("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "plain"):
            store.log_performance(component="crepe", device="cpu", processing_speed_multiplier=-1.5, song=name)
    lines = invoke("stats", "--export", "csv").stdout.splitlines()
    songs = [line.split(",")[8] if '"' not in line else line for line in lines[1:]]
    for line in lines[1:]:
        assert not any(f",{c}" in line for c in ("=", "+1", "-2", "@", "\t")), line
    assert any("'=HYPERLINK" in s for s in songs) and any(",plain," in line for line in lines)
    assert any(",-1.5," in line for line in lines)  # numbers stay numbers


# -- 9. numbers that mean something -------------------------------------------------------------------------
def test_a_stage_with_no_voice_is_logged_as_skipped_and_kept_out_of_the_speeds(env, fast_whisper, tmp_path):
    silent = write_wav(tmp_path / "Quiet - Song.wav", np.zeros((2, 44_100 * 3), dtype=np.float32), 44_100)
    result = invoke("run", str(silent), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    rows = db_rows("SELECT component, skipped, processing_speed_multiplier FROM performance_log ORDER BY logged_at")
    assert [(r["component"], r["skipped"], r["processing_speed_multiplier"]) for r in rows] == [
        ("demucs", 1, None), ("whisper", 1, None), ("crepe", 1, None)]  # fmt: skip
    stats = json.loads(invoke("stats", "--json").stdout)["components"]
    assert all(c["median_speed_x"] is None and c["speed_trend"] == [] for c in stats)


# -- 10. a damaged cache entry --------------------------------------------------------------------------------
def test_a_damaged_cache_entry_is_dropped_with_a_warning_and_computed_again(env, fast_whisper, tmp_path):
    source = write_wav(tmp_path / "Band - Cached.wav", song(6.0), 44_100)
    first = invoke("run", str(source), "--language", "en", "-o", str(tmp_path / "a"), "--json")
    assert first.exit_code == 0, first.output
    cache = Path(os.environ["UGPU_DB"]).parent / "cache"
    entries = sorted(cache.iterdir())
    assert len([e for e in entries if e.suffix in (".npz", ".json")]) == 3 and len(entries) == 5  # + Demucs' stems
    for entry in entries:  # flip bytes in the middle of every entry, the stems too
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    again = invoke("run", str(source), "--language", "en", "-o", str(tmp_path / "b"), "--json")
    assert again.exit_code == 0, again.output
    assert " ".join(again.stderr.split()).count("was damaged: it was removed and is computed again") == 3
    assert not any(s["cached"] for s in json.loads(again.stdout)["songs"][0]["stages"])
    third = json.loads(invoke("run", str(source), "--language", "en", "-o", str(tmp_path / "c"), "--json").stdout)
    assert all(s["cached"] for s in third["songs"][0]["stages"])  # the recomputed entries are good again
