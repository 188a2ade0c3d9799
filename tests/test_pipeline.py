"""``ugpu run`` end to end through the real pipeline on local models and synthesised songs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.audio_factory import encode, melody, song, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.run.fallback import Rung, StageFailed, ladder, run_with_fallback
from ultrasinger_gpu_cli.store.db import Store


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)


def db_rows(sql: str):
    with Store.open(os.environ["UGPU_DB"]) as store:
        return [dict(r) for r in store.query(sql)]


# Known notes: (start s, length s, MIDI). One word per note.
NOTES = [(1.0, 0.6, 57), (1.8, 0.5, 60), (2.5, 0.8, 64), (3.5, 0.5, 62), (4.2, 0.9, 67), (6.0, 0.6, 65),
         (6.8, 0.5, 64), (7.5, 1.0, 60), (9.0, 0.5, 69), (9.7, 0.5, 71), (10.4, 0.8, 72), (11.5, 0.6, 67),
         (12.3, 0.5, 65), (13.0, 0.7, 64), (14.0, 0.6, 62), (14.8, 1.0, 60)]  # fmt: skip


def _known_melody(folder: Path) -> tuple[Path, Path]:
    vocals = write_wav(folder / "Known - Melody.wav", melody(NOTES, 17.0, 44_100)[None], 44_100)
    words = [{"word": f" la{i % 3}" if i % 3 else " la", "start": s, "end": s + n} for i, (s, n, _) in enumerate(NOTES)]
    timings = folder / "words.json"
    timings.write_text(json.dumps(words))
    return vocals, timings


def _notes_in(txt: Path) -> tuple[float, float, list[tuple[float, int]]]:
    headers, notes = {}, []
    for line in txt.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, value = line[1:].split(":", 1)
            headers[key] = value
        elif line[:1] in ":*FR":
            _, start, _, pitch, _ = line.split(" ", 4)
            notes.append((int(start), int(pitch)))
    bpm, gap = float(headers["BPM"].replace(",", ".")), float(headers["GAP"]) / 1000
    beat_s = 60 / (bpm * 4)
    return beat_s, gap, [(gap + start * beat_s, pitch + 60) for start, pitch in notes]


def test_known_melody_gives_the_right_notes(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    result = invoke("run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    txt = Path(report["files"]["ultrastar"])
    assert txt.name == "Known - Melody.txt" and txt.parent.name == "Known - Melody"
    beat_s, _, found = _notes_in(txt)
    assert len(found) == len(NOTES)
    good = sum(1 for (start, midi), (t, n, m) in zip(found, NOTES) if midi == m and abs(start - t) <= beat_s)
    assert good / len(NOTES) >= 0.95, found
    assert "vocals" not in report["files"]  # --no-separation: the input is the vocals


def test_full_pipeline_writes_every_file_and_logs(env, fast_whisper, tmp_path):
    source = encode(write_wav(tmp_path / "mix.wav", song(12.0), 44_100), tmp_path / "Band - Tune.mp3")
    result = invoke("run", str(source), "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    files = {k: Path(v) for k, v in report["files"].items()}
    assert set(files) == {"audio", "vocals", "instrumental", "midi", "ultrastar", "report", "pitch", "preview"}
    assert files["preview"].name == "preview.png" and files["preview"].read_bytes()[:4] == b"\x89PNG"
    folder = tmp_path / "out" / "Band - Tune"
    assert all(p.parent == folder and p.stat().st_size > 0 for p in files.values())
    text = files["ultrastar"].read_text(encoding="utf-8")
    assert text.startswith("#VERSION:1.1.0\n") and text.endswith("\nE\n")
    assert "#VOCALS:Band - Tune [Vocals].wav" in text and "#AUDIO:Band - Tune.mp3" in text
    assert files["midi"].read_bytes()[:4] == b"MThd"
    assert json.loads(files["report"].read_text())["title"] == "Tune"
    import soundfile

    assert soundfile.info(str(files["vocals"])).samplerate == 44_100
    assert [s["stage"] for s in report["stages"]] == ["demucs", "whisper", "crepe"]
    rows = db_rows("SELECT component, run_id, song FROM performance_log ORDER BY logged_at")
    assert [r["component"] for r in rows] == ["demucs", "whisper", "crepe"]
    (run,) = db_rows("SELECT * FROM runs")
    assert run["status"] == "done" and rows[0]["run_id"] == run["run_id"] and run["song"] == "Band - Tune.mp3"
    assert not list(folder.glob(".*partial*"))


def _tagged(tmp_path: Path, name: str, picture_suffix: str, *metadata: str) -> tuple[Path, bytes]:
    """A song file with tags and a cover picture embedded as the file's attached picture."""
    picture = tmp_path / f"art{picture_suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=32x32", "-frames:v", "1",
                    str(picture)], check=True)  # fmt: skip
    mix = write_wav(tmp_path / "mix.wav", song(6.0), 44_100)
    source = tmp_path / name
    tagging = [arg for pair in zip(["-metadata"] * len(metadata), metadata) for arg in pair]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(mix), "-i", str(picture), "-map", "0:a", "-map", "1:v",
                    "-c:v", "copy", *tagging, "-disposition:v", "attached_pic", str(source)], check=True)  # fmt: skip
    return source, picture.read_bytes()


@pytest.mark.parametrize(("name", "picture", "metadata", "headers"), [
    ("Band - Tune.mp3", ".jpg", ("date=2008-05-13", "genre=Indie Rock"), ["#GENRE:Indie Rock", "#YEAR:2008"]),
    ("Band - Tune.flac", ".png", ("DATE=1999",), ["#YEAR:1999"]),
    ("Band - Tune.m4a", ".png", ("artist=Band", "title=Tune %d", "genre=(17)"), []),  # a name ffmpeg could read as a pattern
])  # fmt: skip
def test_the_file_s_cover_year_and_genre_go_with_the_chart(env, fast_whisper, tmp_path, name, picture, metadata, headers):
    """UltraStar shows a song's cover ("Artist - Title [CO].jpg", named by #COVER), year and genre:
    the ones the audio file carries are written, the picture copied as it is stored; a chart
    re-pitched with --timings gets the cover too."""
    source, stored = _tagged(tmp_path, name, picture, *metadata)
    result = invoke("run", str(source), "--no-separation", "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    files = {k: Path(v) for k, v in json.loads(result.stdout)["songs"][0]["files"].items()}
    name = files["ultrastar"].stem  # "Band - Tune", or the title's own
    assert files["cover"].name == f"{name} [CO]{picture}" and files["cover"].read_bytes() == stored
    assert "video" not in files  # a cover is a picture stream, not a video
    text = files["ultrastar"].read_text(encoding="utf-8").splitlines()
    assert text.index(f"#COVER:{name} [CO]{picture}") == text.index("#AUDIO:" + files["audio"].name) + 1
    assert [h for h in text if h.startswith(("#GENRE:", "#YEAR:"))] == headers

    chart = tmp_path / "hand.txt"  # a hand chart of the song without a #COVER, re-pitched
    chart.write_text("\n".join(h for h in text if not h.startswith("#COVER:")) + "\n", encoding="utf-8")
    again = invoke("run", str(source), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "again"), "--json")
    assert again.exit_code == 0, again.output
    repitched = Path(json.loads(again.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8")
    assert f"\n#COVER:{name} [CO]{picture}\n" in repitched and (tmp_path / "again" / name / f"{name} [CO]{picture}").is_file()

    plain = invoke("run", str(write_wav(tmp_path / "Plain - Song.wav", song(6.0), 44_100)), "--no-separation", "-o",
                   str(tmp_path / "plain"), "--language", "en", "--json")  # fmt: skip
    assert plain.exit_code == 0, plain.output
    files = json.loads(plain.stdout)["songs"][0]["files"]
    assert "cover" not in files and not any(line.startswith(("#COVER", "#YEAR", "#GENRE"))
                                            for line in Path(files["ultrastar"]).read_text(encoding="utf-8").splitlines())  # fmt: skip


def test_a_music_video_goes_into_the_song_folder_named_by_video(env, fast_whisper, tmp_path):
    """UltraStar plays a song's video behind the lyrics (#VIDEO): a video given as the song is
    kept beside its chart as it is (its audio streamed into the FLAC #AUDIO names), also when a
    chart is re-pitched with --timings; --no-video keeps the audio only."""
    mix = write_wav(tmp_path / "mix.wav", song(6.0), 44_100)
    source = tmp_path / "Band - Clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-i", str(mix),
                    "-shortest", "-c:v", "libx264", "-c:a", "aac", str(source)], check=True)  # fmt: skip
    result = invoke("run", str(source), "--no-separation", "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    files = {k: Path(v) for k, v in json.loads(result.stdout)["songs"][0]["files"].items()}
    assert files["video"].name == "Band - Clip.mp4" and files["video"].read_bytes() == source.read_bytes()
    assert files["audio"].name == "Band - Clip.flac"
    text = files["ultrastar"].read_text(encoding="utf-8").splitlines()
    assert text.index("#VIDEO:Band - Clip.mp4") == text.index("#AUDIO:Band - Clip.flac") + 1

    chart = tmp_path / "hand.txt"  # a hand chart of the song naming no video, re-pitched
    chart.write_text("\n".join(h for h in text if not h.startswith("#VIDEO:")) + "\n", encoding="utf-8")
    again = invoke("run", str(source), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "again"), "--json")
    assert again.exit_code == 0, again.output
    repitched = Path(json.loads(again.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8")
    assert "\n#VIDEO:Band - Clip.mp4\n" in repitched and (tmp_path / "again" / "Band - Clip" / "Band - Clip.mp4").is_file()

    audio_only = invoke("run", str(source), "--no-separation", "--no-video", "-o", str(tmp_path / "plain"), "--json")
    assert audio_only.exit_code == 0, audio_only.output
    files = json.loads(audio_only.stdout)["songs"][0]["files"]
    assert "video" not in files and not (tmp_path / "plain" / "Band - Clip" / "Band - Clip.mp4").exists()
    assert "#VIDEO" not in Path(files["ultrastar"]).read_text(encoding="utf-8")


def test_rehearsed_out_of_memory_walks_the_ladder_and_the_song_finishes(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    result = invoke("run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "o"), "--json",
                    "--rehearse-fault", "crepe:1:oom", "--rehearse-fault", "crepe:2")  # fmt: skip
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["songs"]
    assert [(f["from"], f["to"]) for f in report["fallbacks"]] == [("cpu batch 512", "cpu batch 256"),
                                                                  ("cpu batch 256", "cpu batch 128")]  # fmt: skip
    assert report["stages"][-1]["settings"]["batch_size"] == 128
    events = db_rows("SELECT stage, from_setting, to_setting, reason FROM fallback_events ORDER BY created_at")
    assert [e["to_setting"] for e in events] == ["cpu batch 256", "cpu batch 128"]
    assert all(e["stage"] == "crepe" and e["reason"] == "out of memory" for e in events)
    shown = invoke("fallback", "--json")
    assert len(json.loads(shown.stdout)["events"]) == 2


def test_no_fallback_stops_with_a_clear_message(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    result = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--timings", str(timings),
                                      "-o", str(tmp_path / "o"), "--no-fallback", "--rehearse-fault", "crepe:1:oom"])  # fmt: skip
    assert result.exit_code == 1
    assert "fallback is off" in result.stderr and "crepe" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o" / "Known - Melody" / "Known - Melody.txt").exists()


@pytest.mark.parametrize("bad", ["crepe", "crepe:0:oom", "vocoder:1:oom", "crepe:1:meltdown", "crepe:x"])
def test_bad_rehearse_fault_is_refused(env, tmp_path, bad):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.wav"), "--rehearse-fault", bad])
    assert result.exit_code == 2 and "STAGE:ATTEMPT" in result.stderr


def test_ladder_from_cuda_halves_then_moves_to_the_cpu_and_fatal_errors_go_straight_there():
    from ultrasinger_gpu_cli.components import WHISPER

    gpu = WHISPER.defaults(device="cuda", batch_size=8, model="large-v3-turbo", compute_type="float16")
    cpu = WHISPER.defaults(device="cpu", batch_size=4, model="small")
    rungs = ladder("whisper", gpu, cpu)
    assert [r.label for r in rungs] == ["cuda batch 8", "cuda batch 4", "cuda batch 2", "cuda batch 1", "cpu batch 4"]
    import torch

    seen, events = [], []

    def attempt(settings):
        seen.append(settings.batch_size)
        if settings.device == "cuda" and settings.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    assert run_with_fallback("whisper", rungs, attempt, on_event=events.append) == ("done", rungs[2].settings)
    assert seen == [8, 4, 2] and [e.to_setting for e in events] == ["cuda batch 4", "cuda batch 2"]

    def no_kernel(settings):
        if settings.device == "cuda":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return settings.model

    events.clear()
    assert run_with_fallback("whisper", rungs, no_kernel, on_event=events.append)[0] == "small"
    assert [(e.from_setting, e.to_setting) for e in events] == [("cuda batch 8", "cpu batch 4")]
    with pytest.raises(ValueError):  # anything else is not the ladder's business
        run_with_fallback("whisper", [Rung(cpu, "x")], lambda s: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(StageFailed):
        run_with_fallback("whisper", [Rung(cpu, "x")], lambda s: (_ for _ in ()).throw(MemoryError()))
    assert events[0].reason.startswith("the GPU cannot run it (CUDA error: no kernel image")
    assert (events[0].stage, events[0].device) == ("whisper", "cuda")


def test_out_of_memory_on_a_card_two_stages_share_gives_way_or_waits_and_never_walks_the_ladder(monkeypatch):
    """A batch's next song separated ahead shares the card with this song's stages: out of memory
    then is the other stage's doing, so no smaller batch, no CPU (the chart would change). The
    stage beside gives way; the other waits for the card and tries the same settings again. A
    backend that draws no random numbers (Demucs) is never seeded, so it never reseeds Whisper."""
    import threading
    from types import SimpleNamespace

    import torch

    from ultrasinger_gpu_cli.gpu import devices
    from ultrasinger_gpu_cli.gpu.devices import DeviceBinding
    from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve
    from ultrasinger_gpu_cli.run import runner as runner_module
    from ultrasinger_gpu_cli.run.runner import GaveWay, StageRunner

    card = DeviceBinding("cuda", 0, None)
    measured = []
    monkeypatch.setattr(devices, "bind", lambda gpu: card)
    monkeypatch.setattr(devices, "cap_memory", lambda binding, fraction: None)
    monkeypatch.setattr(devices, "start_measuring", measured.append)
    monkeypatch.setattr(devices, "peak_vram_mb", lambda binding: 1234)
    monkeypatch.setattr(devices, "free_memory", lambda **kwargs: None)
    monkeypatch.setattr(devices, "side_stream", lambda binding: None)
    seeded = []
    monkeypatch.setattr(runner_module, "seed_everything", seeded.append)
    monkeypatch.setattr(StageRunner, "_engine", lambda self, component, settings: (SimpleNamespace(
        settings=settings, binding=self.binding(settings), model_name=settings.model, retune=lambda s: None,
        seeded=lambda seed: None), (component, settings.backend, settings.model, "cuda:0", settings.compute_type)))  # fmt: skip
    plan = resolve(PlanTarget("a 16 GB GPU", 16 * 1024, "8.9", hypothetical=True))
    runner = StageRunner(plan, on_event=lambda e: None)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    words, stems = SimpleNamespace(no_vocals=False), SimpleNamespace(silent=False)

    def beside(call, out):
        thread = threading.Thread(target=lambda: out.append(runner.run("demucs", "B", 10.0, call, seed=7, beside=True)))
        thread.start()
        return thread

    # 1. This song's Whisper runs out of memory while the next song's Demucs works beside it
    working, release, tries, ahead = threading.Event(), threading.Event(), [], []

    def separating(engine, progress):
        working.set()
        assert release.wait(10)
        return stems

    def transcribing(engine, progress):
        tries.append((engine.settings.batch_size, release.is_set()))
        if len(tries) == 1:
            threading.Timer(0.3, release.set).start()
            raise oom
        return words

    thread = beside(separating, ahead)
    assert working.wait(10)
    result, run, fallbacks = runner.run("whisper", "A", 10.0, transcribing, seed=3)
    thread.join()
    batch = plan.components["whisper"].value("batch_size")
    assert result is words and fallbacks == [] and tries == [(batch, False), (batch, True)]  # waited, same batch
    assert ahead[0][1].shared_card and not run.shared_card  # the second try had the card alone
    assert seeded == [3, 3] and len(measured) == 2  # Demucs never seeded; the counter reset only when alone

    # 2. The next song's Demucs runs out of memory while this song's stage works: it gives way
    working.clear()
    done = threading.Event()

    def listening(engine, progress):
        working.set()
        assert done.wait(10)
        return words

    main = []
    thread = threading.Thread(target=lambda: main.append(runner.run("whisper", "A", 10.0, listening, seed=3)))
    thread.start()
    assert working.wait(10)
    with pytest.raises(GaveWay, match="demucs ran out of memory beside another stage on cuda:0"):
        runner.run("demucs", "B", 10.0, lambda engine, progress: (_ for _ in ()).throw(oom), beside=True)
    done.set()
    thread.join()
    assert main[0][1].shared_card and main[0][2] == []

    # 3. Alone on the card, out of memory walks the ladder as ever
    tried = []

    def once(engine, progress):
        tried.append(engine.settings.batch_size)
        if len(tried) == 1:
            raise oom
        return stems

    _, run, fallbacks = runner.run("demucs", "B", 10.0, once, beside=True)
    assert [e.reason for e in fallbacks] == ["out of memory"] and not run.shared_card


def test_several_songs_load_each_model_once_and_bad_ones_do_not_stop_the_others(env, fast_whisper, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.engines.faster_whisper_engine import FasterWhisperEngine
    from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine

    loads = []
    for engine in (WhisperEngine, FasterWhisperEngine):  # whichever backend the plan runs
        monkeypatch.setattr(engine, "load", lambda self, real=engine.load: loads.append(type(self)) or real(self))
    one = write_wav(tmp_path / "One - A.wav", song(8.0), 44_100)
    two = write_wav(tmp_path / "Two - B.wav", song(9.0), 44_100)
    bad = tmp_path / "Bad - C.mp3"
    bad.write_text("not audio")
    paths = f"{one}\n{tmp_path / 'missing.mp3'}\n{bad}\n{two}\n"
    result = CliRunner().invoke(app, ["run", "--lanes", "1", "-", "-o", str(tmp_path / "out"), "--language", "en", "--json"], input=paths)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [Path(s["source"]).name for s in data["songs"]] == ["One - A.wav", "Two - B.wav"]
    assert [Path(f["song"]).name for f in data["failures"]] == ["missing.mp3", "Bad - C.mp3"]
    assert "2 of 4 song(s) failed" in result.stderr
    assert " ".join(result.stderr.split()).count(f"{tmp_path / 'missing.mp3'}: ") == 2  # its line and the summary, once each
    assert len(loads) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["One - A", "Two - B"]


def test_the_first_engine_loads_while_the_song_is_read_and_its_stage_reports_the_whole_load(env, fast_whisper, tmp_path,
                                                                                                monkeypatch):  # fmt: skip
    import threading

    from ultrasinger_gpu_cli.engines.demucs_engine import DemucsEngine
    from ultrasinger_gpu_cli.run import pipeline

    loading, loads = threading.Event(), []

    def load(self, real=DemucsEngine.load):
        loads.append(threading.current_thread().name)
        loading.set()
        time.sleep(0.4)  # a slow load: the stage must report it whole, though it waited for less
        real(self)

    seen, real_scan, wait_s = [], pipeline.scan_stream, [20.0]

    def scan(stream, keep16):  # the song's read waits (a while) for the load to begin
        seen.append(loading.wait(timeout=wait_s[0]))
        return real_scan(stream, keep16)

    monkeypatch.setattr(DemucsEngine, "load", load)
    monkeypatch.setattr(pipeline, "scan_stream", scan)
    source = write_wav(tmp_path / "Band - Tune.wav", song(6.0), 44_100)
    result = invoke("run", str(source), "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    assert seen == [True] and loads == ["ugpu-load-demucs"]  # once, on its own thread, begun before the scan ended
    (report,) = json.loads(result.stdout)["songs"]
    assert report["stages"][0]["stage"] == "demucs" and report["stages"][0]["load_seconds"] >= 0.4
    assert all(s["load_seconds"] < 5 for s in report["stages"])

    # Run again: every stage's result is in the resume cache, and nothing loads ahead for nothing.
    seen.clear()
    loading.clear()
    wait_s[0] = 1.0
    again = invoke("run", str(source), "-o", str(tmp_path / "again"), "--language", "en", "--json")
    assert again.exit_code == 0, again.output
    assert seen == [False] and loads == ["ugpu-load-demucs"]
    assert all(s["cached"] for s in json.loads(again.stdout)["songs"][0]["stages"])


def test_a_load_ahead_that_fails_is_left_to_the_stage(env, fast_whisper, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.engines.demucs_engine import DemucsEngine

    calls = []

    def load(self, real=DemucsEngine.load):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a load that failed once")
        real(self)

    monkeypatch.setattr(DemucsEngine, "load", load)
    source = write_wav(tmp_path / "Band - Tune.wav", song(6.0), 44_100)
    result = invoke("run", str(source), "-o", str(tmp_path / "out"), "--language", "en", "--json", "--no-fallback")
    assert result.exit_code == 0, result.output
    assert len(calls) == 2 and not json.loads(result.stdout)["songs"][0]["fallbacks"]


def _song_files(out: Path) -> dict[str, bytes]:
    """Every file a run wrote under ``out`` but the reports (they hold the run's id and times)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(".report.json")}  # fmt: skip


def test_an_overlapped_batch_writes_byte_for_byte_what_one_song_at_a_time_writes(env, fast_whisper, tmp_path, monkeypatch):
    sources = [str(write_wav(tmp_path / f"Band - Take {n}.wav", song(7.0 + n), 44_100)) for n in range(3)]
    written = {}
    for flag in ("--no-overlap", "--json"):
        data = tmp_path / f"data-{flag[2:]}"  # its own database, and its resume cache beside: every engine runs
        monkeypatch.setenv("UGPU_DB", str(data / "ugpu.db"))
        out = tmp_path / flag[2:]
        result = invoke("run", "--lanes", "1", *sources, "-o", str(out), "--language", "en", "--json", flag)
        assert result.exit_code == 0, result.output
        songs = json.loads(result.stdout)["songs"]
        assert [Path(s["source"]).name for s in songs] == [Path(s).name for s in sources]  # in the order given
        assert [s["stage"] for r in songs for s in r["stages"]] == ["demucs", "whisper", "crepe"] * 3
        assert not any(s["cached"] for r in songs for s in r["stages"])
        assert [r["song"] for r in db_rows("SELECT song FROM performance_log WHERE component = 'crepe' ORDER BY logged_at")] \
            == [Path(s).name for s in sources]  # fmt: skip
        written[flag] = _song_files(out)
    assert len(written["--json"]) == 3 * 8 and written["--no-overlap"] == written["--json"]


def _ahead_always(monkeypatch) -> None:
    """The plan says the card holds the next song's Demucs beside this song's stages (on this
    CPU, where a real plan never says it)."""
    from ultrasinger_gpu_cli.plan.resolver import Ahead, Plan

    monkeypatch.setattr(Plan, "ahead", property(lambda plan: Ahead(True, 0, "this test")))


def test_a_batch_that_separates_ahead_writes_byte_for_byte_what_one_song_at_a_time_writes(env, fast_whisper, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    import threading

    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    _ahead_always(monkeypatch)
    separated, real = [], Pipeline._separate

    def separate(self, work, **kwargs):
        separated.append((work.source.name, threading.current_thread().name, kwargs.get("beside", False)))
        return real(self, work, **kwargs)

    monkeypatch.setattr(Pipeline, "_separate", separate)
    sources = [str(write_wav(tmp_path / f"Band - Take {n}.wav", song(7.0 + n), 44_100)) for n in range(3)]
    written, order = {}, {}
    for flag in ("--no-overlap", "--json"):
        separated.clear()
        monkeypatch.setenv("UGPU_DB", str(tmp_path / f"data-{flag[2:]}" / "ugpu.db"))  # its own resume cache too
        out = tmp_path / flag[2:]
        result = invoke("run", "--lanes", "1", *sources, "-o", str(out), "--language", "en", "--json", flag)
        assert result.exit_code == 0, result.output
        songs = json.loads(result.stdout)["songs"]
        assert [Path(s["source"]).name for s in songs] == [Path(s).name for s in sources]
        assert [s["stage"] for r in songs for s in r["stages"]] == ["demucs", "whisper", "crepe"] * 3
        assert not any(s["cached"] or s["shared_card"] for r in songs for s in r["stages"])  # no card here
        written[flag], order[flag] = _song_files(out), list(separated)
    names = [Path(s).name for s in sources]
    assert [(n, beside) for n, _, beside in order["--no-overlap"]] == [(n, False) for n in names]
    # the first song separated by the engines' thread, the next ones on the ahead worker, beside
    assert [(n, beside) for n, _, beside in order["--json"]] == [(names[0], False), (names[1], True), (names[2], True)]
    assert [t.startswith("ugpu-ahead") for _, t, _ in order["--json"]] == [False, True, True]
    assert len(written["--json"]) == 3 * 8 and written["--no-overlap"] == written["--json"]


def test_a_separation_that_gives_way_runs_again_alone_and_the_song_is_the_same(env, fast_whisper, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.run.events import StageStarted
    from ultrasinger_gpu_cli.run.runner import GaveWay, StageRunner

    _ahead_always(monkeypatch)
    real, gave_way = StageRunner.run, []

    def run(self, component, song, audio_seconds, call, **kwargs):
        if kwargs.get("beside"):  # as the runner does where a shared card ran out of memory
            gave_way.append(song)
            self.emit(StageStarted(song, component, self.run_id))
            raise GaveWay(f"{component} ran out of memory beside another stage on cuda:0")
        return real(self, component, song, audio_seconds, call, **kwargs)

    monkeypatch.setattr(StageRunner, "run", run)
    sources = [str(write_wav(tmp_path / f"Band - Take {n}.wav", song(7.0 + n), 44_100)) for n in range(2)]
    result = invoke("run", "--lanes", "1", *sources, "-o", str(tmp_path / "ahead"), "--language", "en", "--json")
    assert result.exit_code == 0, result.output
    assert gave_way == ["Band - Take 1.wav"] and "it runs again once the card is free" in " ".join(result.stderr.split())
    songs = json.loads(result.stdout)["songs"]
    assert [s["stage"] for r in songs for s in r["stages"]] == ["demucs", "whisper", "crepe"] * 2
    monkeypatch.setattr(StageRunner, "run", real)
    monkeypatch.setenv("UGPU_DB", str(tmp_path / "alone" / "ugpu.db"))
    alone = invoke("run", *sources, "-o", str(tmp_path / "serial"), "--language", "en", "--json", "--no-overlap")
    assert alone.exit_code == 0, alone.output
    assert _song_files(tmp_path / "ahead") == _song_files(tmp_path / "serial")


def test_a_batch_stopped_while_a_song_is_separated_ahead_stops_it_and_keeps_no_folder_of_it(env, tmp_path, monkeypatch):
    import threading

    from ultrasinger_gpu_cli.errors import ModelMissingError
    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    _ahead_always(monkeypatch)
    real_engines, real_ahead, real_separate = Pipeline._engines, Pipeline.separate_ahead, Pipeline._separate
    stopped, midway, stops = [], threading.Event(), []

    def separate_ahead(self, work, stop):
        stops.append(stop)
        real_ahead(self, work, stop)
        stopped.append((work.source.name, stop.is_set(), work.vocals16 is None))

    def separate(self, work, *, beside=False, watch=lambda p: p):
        def watched(progress):
            report = watch(progress)

            def first(fraction, seconds):
                if not midway.is_set():  # the first block separated: hold here until the batch stops
                    midway.set()
                    assert stops[0].wait(60)
                report(fraction, seconds)

            return first

        return real_separate(self, work, beside=beside, watch=watched if beside else watch)

    def engines(self, work, separated=None):
        if work.source.name == "A - One.wav":
            separated()  # the next song's separation starts ahead ...
            assert midway.wait(60)
            raise ModelMissingError("no weights for this test", hint="none")  # ... and the batch stops
        return real_engines(self, work, separated)

    monkeypatch.setattr(Pipeline, "_separate", separate)
    monkeypatch.setattr(Pipeline, "separate_ahead", separate_ahead)
    monkeypatch.setattr(Pipeline, "_engines", engines)
    sources = [str(write_wav(tmp_path / name, song(20.0), 44_100)) for name in ("A - One.wav", "B - Two.wav")]
    result = invoke("run", "--lanes", "1", *sources, "-o", str(tmp_path / "out"), "--language", "en")
    assert result.exit_code != 0 and "no weights for this test" in result.stderr
    assert stopped == [("B - Two.wav", True, True)]  # stopped between blocks, not separated to the end
    assert list((tmp_path / "out").iterdir()) == []


def test_an_overlapped_batch_goes_on_past_a_song_whose_engines_fail_and_keeps_no_folder_of_it(env, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    real = Pipeline._engines

    def engines(self, work, *args):
        if work.source.name == "B - Two.wav":
            raise RuntimeError("a bug in one song")
        return real(self, work, *args)

    monkeypatch.setattr(Pipeline, "_engines", engines)
    vocals, timings = _known_melody(tmp_path)
    sources = [str(write_wav(tmp_path / name, melody(NOTES, 17.0, 44_100)[None], 44_100))
               for name in ("A - One.wav", "B - Two.wav", "C - Three.wav")]  # fmt: skip
    result = invoke("run", "--lanes", "1", *sources, "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [Path(s["source"]).name for s in data["songs"]] == ["A - One.wav", "C - Three.wav"]
    assert [Path(f["song"]).name for f in data["failures"]] == ["B - Two.wav"]
    assert "unexpected error" in data["failures"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A - One", "C - Three"]


def test_missing_weights_stop_an_overlapped_batch_and_the_song_opened_ahead_keeps_no_folder(env, tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.errors import ModelMissingError
    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    opened = []
    real_open, real_engines = Pipeline.open_song, Pipeline._engines

    def open_song(self, source, **kwargs):
        work = real_open(self, source, **kwargs)
        opened.append(work.held.folder)
        return work

    def engines(self, work, *args):
        time.sleep(0.5)  # the next song is opened meanwhile
        raise ModelMissingError("no weights for this test", hint="none")

    monkeypatch.setattr(Pipeline, "open_song", open_song)
    monkeypatch.setattr(Pipeline, "_engines", engines)
    vocals, timings = _known_melody(tmp_path)
    sources = [str(write_wav(tmp_path / name, melody(NOTES, 17.0, 44_100)[None], 44_100))
               for name in ("A - One.wav", "B - Two.wav", "C - Three.wav")]  # fmt: skip
    result = invoke("run", "--lanes", "1", *sources, "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"))
    assert result.exit_code != 0 and "no weights for this test" in result.stderr
    assert [f.name for f in opened] == ["A - One", "B - Two"]  # the second song was opened ahead
    assert list((tmp_path / "out").iterdir()) == []  # and let go of: no folder, no lock left
    monkeypatch.setattr(Pipeline, "_engines", real_engines)
    again = invoke("run", sources[1], "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"))
    assert again.exit_code == 0, again.output


def _ugpu(*args: str, env: dict) -> subprocess.Popen:
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    # SIGINT restored to its default: a test run started in the background (nohup ... &) passes
    # it on ignored, and Python then never turns it into KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def test_resume_after_kill_minus_9_skips_finished_stages_and_gives_the_same_result(env, tmp_path):
    source = write_wav(tmp_path / "Resume - Me.wav", song(25.0), 44_100)
    _, timings = _known_melody(tmp_path)
    cache = Path(os.environ["UGPU_DB"]).parent / "cache"
    environ = {**os.environ}
    proc = _ugpu("run", str(source), "--timings", str(timings), "-o", str(tmp_path / "out"), env=environ)
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("*.npz")):  # Demucs finished and was cached
        time.sleep(0.05)
    proc.kill()  # kill -9 in the middle of the song
    proc.wait(30)
    assert list(cache.glob("*.npz")), "demucs never finished"
    folder = tmp_path / "out" / "Resume - Me"
    assert not (folder / "Resume - Me.txt").exists() or (folder / "Resume - Me.txt").read_text().endswith("E\n")
    again = invoke("run", str(source), "--timings", str(timings), "-o", str(tmp_path / "out"), "--json")
    assert again.exit_code == 0, again.output
    stages = json.loads(again.stdout)["songs"][0]["stages"]
    assert stages[0]["stage"] == "demucs" and stages[0]["cached"] is True
    first = (folder / "Resume - Me.txt").read_text()
    third = invoke("run", str(source), "--timings", str(timings), "-o", str(tmp_path / "out2"), "--json")
    assert all(s["cached"] for s in json.loads(third.stdout)["songs"][0]["stages"])
    assert (tmp_path / "out2" / "Resume - Me" / "Resume - Me.txt").read_text() == first


def test_ctrl_c_stops_cleanly_with_exit_130(env, tmp_path):
    # Six songs: the run lasts long enough for the interrupt to land mid-run on any machine (with
    # SwiftF0 on the CPU a song here takes ~5 s; three of them once finished before the signal).
    sources = [str(write_wav(tmp_path / f"Long - Song {n}.wav", song(60.0 + n), 44_100)) for n in range(6)]
    _, timings = _known_melody(tmp_path)
    proc = _ugpu("run", "--lanes", "1", *sources, "--timings", str(timings), "-o", str(tmp_path / "out"), env={**os.environ})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait until the run is registered and working
        if Path(os.environ["UGPU_DB"]).exists() and db_rows("SELECT stage FROM runs WHERE stage IS NOT NULL"):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    (run,) = db_rows("SELECT status FROM runs")
    assert run["status"] == "interrupted"


def test_tags_with_path_characters_stay_inside_the_output_folder(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    tagged = tmp_path / "tagged.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(vocals), "-metadata", "artist=../../etc",
                    "-metadata", "title=pass/wd", str(tagged)], check=True)  # fmt: skip
    result = invoke("run", str(tagged), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "out"), "--json")
    folder = Path(json.loads(result.stdout)["songs"][0]["folder"])
    assert folder.parent == (tmp_path / "out").resolve() and "/" not in folder.name


def test_format_version_0_3_0_and_a_timings_ultrastar_file(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    first = json.loads(invoke("run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "a"),
                              "--json").stdout)["songs"][0]  # fmt: skip
    txt = Path(first["files"]["ultrastar"])
    again = invoke("run", str(vocals), "--no-separation", "--timings", str(txt), "-o", str(tmp_path / "b"),
                   "--format-version", "0.3.0", "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    text = Path(json.loads(again.stdout)["songs"][0]["files"]["ultrastar"]).read_text()
    assert text.startswith("#VERSION:0.3.0") and "#AUDIO" not in text
    _, _, a = _notes_in(txt)
    _, _, b = _notes_in(Path(json.loads(again.stdout)["songs"][0]["files"]["ultrastar"]))
    assert [m for _, m in a] == [m for _, m in b]  # re-pitched from the same timings: the same melody


def _in_pty(args: list[str], env: dict, timeout: float = 120) -> tuple[int, str]:
    import pty
    import select

    master, slave = pty.openpty()
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)  # fmt: skip
    os.close(slave)
    output = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=30)
    os.close(master)
    return rc, output.decode("utf-8", "replace")


def test_progress_display_on_a_terminal(env, tmp_path):
    vocals, timings = _known_melody(tmp_path)
    environ = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    rc, out = _in_pty(["run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "o")], environ)
    assert rc == 0, out
    assert "crepe" in out and "x real time" in out and "Summary" in out and "Traceback" not in out
    rc, out = _in_pty(["crepe", str(vocals), "--model", "tiny"], environ)
    assert rc == 0 and "crepe tiny on cpu" in out and "Traceback" not in out


def test_silent_song_finishes_with_no_vocals_found(env, fast_whisper, tmp_path):
    import numpy as np

    silent = write_wav(tmp_path / "Quiet - Song.wav", np.zeros((2, 44_100 * 3), dtype=np.float32), 44_100)
    result = invoke("run", str(silent), "-o", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    assert "no vocals found" in result.stderr
    (report,) = json.loads(result.stdout)["songs"]
    assert report["notes"] == 0 and Path(report["files"]["ultrastar"]).read_text().endswith("E\n")


def test_a_cuda_plan_without_a_usable_gpu_moves_each_stage_to_the_cpu(env, fast_whisper, tmp_path):
    """The ladder's last step, for real: the plan says cuda, PyTorch here has no CUDA."""
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve

    from ultrasinger_gpu_cli.gpu.facts import GpuIdentity

    plan = resolve(PlanTarget("RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-x"), torch_can_run=True))
    assert {c.device for c in plan.components.values()} == {"cuda"}
    source = write_wav(tmp_path / "Band - Cuda.wav", song(8.0), 44_100)
    events = []
    with Store.open(os.environ["UGPU_DB"]) as store:
        pipeline = Pipeline(plan, RunOptions(out_dir=tmp_path / "out", language="en", models_dir=env), store,
                            on_event=events.append)  # fmt: skip
        pipeline.start()
        report = pipeline.run_song(source)
        pipeline.finish("done")
        stored = store.query("SELECT stage, to_setting FROM fallback_events ORDER BY created_at")
    assert [s.device for s in report.stages] == ["cpu", "cpu", "cpu"]
    assert [(f.stage, f.from_setting.split()[0], f.to_setting.split()[0]) for f in report.fallbacks] == [
        ("demucs", "cuda", "cpu"), ("whisper", "cuda", "cpu"), ("crepe", "cuda", "cpu")]  # fmt: skip
    assert all("cannot run" in f.reason for f in report.fallbacks)
    assert [tuple(r) for r in stored] == [(f.stage, f.to_setting) for f in report.fallbacks]
    assert Path(report.files["ultrastar"]).read_text().endswith("E\n")
    cache = (Path(os.environ["UGPU_DB"]).parent / "cache")
    assert len(list(cache.glob("*.npz"))) == 1  # demucs ran its planned model; whisper and crepe used CPU stand-ins
    assert not list(cache.glob("*.json"))


def test_a_pipeline_leaves_its_options_as_given(tmp_path):
    """One RunOptions can serve several pipelines (workers, actors): building one changes nothing in it."""
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve

    options = RunOptions(out_dir=tmp_path / "out")
    before = repr(options)
    pipeline = Pipeline(resolve(CPU_TARGET, "balanced"), options)
    assert repr(options) == before and options.cache_dir is None
    assert pipeline.cache.folder == tmp_path / "out" / "cache"  # no database: the cache sits in the output


def test_an_english_only_whisper_model_is_never_asked_for_another_language(tmp_path, env):
    """``tiny.en`` hears English: ``--language de`` with it (the user's stored model) is refused
    before anything runs, by ``ugpu run`` once for the batch and by the pipeline for each song
    (a server job's own language), where the libraries would transcribe English and the chart
    say ``#LANGUAGE:German``. English, or no language (detected), runs."""
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app
    from ultrasinger_gpu_cli.components.whisper import check_model_language
    from ultrasinger_gpu_cli.errors import InvalidSettingError
    from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.run.pipeline import Pipeline

    from tests.audio_factory import song, write_wav

    tone_song = write_wav(tmp_path / "Band - Song.wav", song(3.0), 44_100)
    check_model_language("tiny.en", "en"), check_model_language("tiny.en", None), check_model_language("tiny", "de")
    with pytest.raises(InvalidSettingError, match="hears English only"):
        check_model_language("small.en", "fr")
    saved = CliRunner().invoke(app, ["whisper", "--model", "tiny.en", "--save"])
    assert saved.exit_code == 0, saved.output
    refused = CliRunner().invoke(app, ["run", str(tone_song), "--language", "de", "-o", str(tmp_path / "out")])
    assert refused.exit_code == 2
    assert "--language de: the Whisper model tiny.en hears English only" in " ".join(refused.stderr.split())
    assert "ugpu whisper --model tiny --save" in " ".join(refused.stderr.split())
    assert not (tmp_path / "out").exists()
    plan = resolve(CPU_TARGET, "balanced", overrides={"whisper": {"model": "tiny.en"}})
    with pytest.raises(InvalidSettingError, match="hears English only"):
        Pipeline(plan, RunOptions(out_dir=tmp_path / "o2")).open_song(tone_song, language="de")
