"""Nothing a user feeds ugpu ends in a traceback, a hang or a broken file: one test per class
of bad input, and a table of hostile command lines run as a user would run them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import SHORT_NOTES
from tests.audio_factory import melody, song, write_wav
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.store.db import Store

ROOT = Path(__file__).resolve().parent.parent
NOTES = SHORT_NOTES


@pytest.fixture
def vocals(tmp_path) -> Path:
    return write_wav(tmp_path / "Known - Melody.wav", melody(NOTES, 4.5, 44_100)[None], 44_100)


def ugpu(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh process, the real terminal streams."""
    code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_clean_failure(result, code: int, *needles: str) -> None:
    output = result.stderr + (result.stdout or "")
    assert result.returncode == code if hasattr(result, "returncode") else result.exit_code == code, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output.replace("\n", " "), (needle, output)


# -- 1. the output location ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "under-a-file", "proc", "sys"])
def test_a_bad_output_folder_is_refused_before_any_model_loads(env, vocals, words, tmp_path, kind):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    out = {"file": a_file, "under-a-file": a_file / "sub", "proc": Path("/proc/ugpu-test"), "sys": Path("/sys/ugpu-test")}[kind]
    empty_models = tmp_path / "no-models"  # if a model loaded first, the error would be about the models
    for args in (["run", str(vocals), "--timings", str(words), "-o", str(out)],
                 ["crepe", str(vocals), "-o", str(out)]):  # fmt: skip
        result = ugpu(*args, env={"UGPU_MODELS": str(empty_models)})
        assert_clean_failure(result, 1, str(out))
        assert "model" not in result.stderr.split("hint")[0], result.stderr
    assert a_file.read_text() == "x"


# -- 2. names longer than the file system allows ------------------------------------------------------
def test_a_300_character_title_is_cut_to_fit_and_the_next_song_still_runs(env, vocals, words, tmp_path):
    long = tmp_path / "long.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(vocals), "-metadata", "artist=Группа",
                    "-metadata", f"title={'Я' * 300}", str(long)], check=True)  # fmt: skip
    result = ugpu("run", str(long), str(vocals), "--no-separation", "--timings", str(words), "-o", str(tmp_path / "out"),
                  "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    songs = json.loads(result.stdout)["songs"]
    assert len(songs) == 2
    for report in songs:
        for path in report["files"].values():
            assert len(Path(path).name.encode()) <= 255 and len(Path(path).parent.name.encode()) <= 255
            assert Path(path).is_file()


# -- 3. header injection -----------------------------------------------------------------------------
CONTROL = "".join(chr(c) for c in range(1, 32)) + "\x7f\x85\u2028\u2029"


def _chart_is_valid(text: str, folder: Path) -> None:
    lines = text.split("\n")
    assert lines[-1] == "" and lines[-2] == "E"
    for line in lines[:-2]:
        assert line.startswith("#") or line[:2] in (": ", "* ", "F ", "R ", "- "), repr(line)
        assert not any(ch in CONTROL for ch in line), repr(line)
    headers = dict(line[1:].split(":", 1) for line in lines if line.startswith("#"))
    for key in ("MP3", "AUDIO", "VOCALS", "INSTRUMENTAL"):
        if key in headers:
            assert (folder / headers[key]).is_file(), (key, headers[key])


def test_control_characters_in_tags_file_names_and_words_never_reach_the_headers(env, vocals, tmp_path):
    evil = "A\nB\r#MP3:../../../etc/passwd" + CONTROL.replace("\n", "").replace("\r", "")
    source = tmp_path / f"Art{CONTROL[:9]}ist - Ti\ntle{CONTROL[10:]}.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(vocals), "-metadata", f"artist={evil}",
                    "-metadata", f"title={evil}", "-metadata", "language=en\n#GAP:5", str(source)], check=True)  # fmt: skip
    plain = tmp_path / f"Plain{CONTROL}Name.wav"
    plain.write_bytes(vocals.read_bytes())
    words = tmp_path / "words.json"
    words.write_text(json.dumps([{"word": f"la{CONTROL}\n#BPM:1", "start": s, "end": s + n} for s, n, _ in NOTES]))
    result = ugpu("run", str(source), str(plain), "--timings", str(words), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    for report in json.loads(result.stdout)["songs"]:
        txt = Path(report["files"]["ultrastar"])
        _chart_is_valid(txt.read_text(encoding="utf-8"), txt.parent)
        assert "passwd" not in txt.read_text(encoding="utf-8").split("#TITLE")[0]


# -- 4. --timings files ------------------------------------------------------------------------------
CHART = "#TITLE:Café\n#ARTIST:Zoë\n#BPM:300\n#GAP:500\n: 0 8 0 Ça \n: 10 8 4 va \n- 20\n: 22 8 7 très \n: 32 8 5 bien\nE\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1252"])
def test_charts_in_the_encodings_games_read_are_read(env, vocals, tmp_path, encoding):
    chart = tmp_path / "chart.txt"
    chart.write_bytes(CHART.encode(encoding))
    result = ugpu("run", str(vocals), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "o"), "--json")
    assert result.returncode == 0, result.stderr
    text = Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).read_text(encoding="utf-8")
    assert "Ça" in text and "très" in text
    assert ("read as cp1252" in result.stderr) == (encoding == "cp1252")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("42", "a list of words or an object"),
        ("null", "a list of words or an object"),
        ("[1, 2, 3]", "[0] must be an object"),
        ('{"segments": [{"text": "no words"}]}', "segments[0] must have a list of words"),
        ('{"segments": 5}', "'segments' must be a list"),
        ('[{"word": "a", "start": "soon", "end": 1}]', "[0].start must be a number"),
        ('[{"word": "a", "start": 2, "end": 1}]', "[0] ends"),
        ('[{"word": "a", "start": -5, "end": 1}]', "[0].start = -5"),
        ('[{"word": "a", "start": 0}]', "[0] has no 'end'"),
        ('{"segments": [{"words": [{"word": 7, "start": 0, "end": 1}]}]}', "segments[0].words[0].word must be text"),
        ("\x00\x01binary", "binary file"),
        ("#BPM:300\n: -400 4 0 la\nE\n", "before the start of the audio"),
        ("#BPM:300\n#GAP:0\n: 0 0 0 la\nE\n", "line 3"),
        ("#BPM:abc\n: 0 4 0 la\nE\n", "#BPM:abc is not a number"),
        ("#BPM:nan\n: 0 4 0 la\nE\n", "out of range"),
        ("#BPM:300\n: x 4 0 la\nE\n", "whole numbers"),
        ("#BPM:300\n: 99999999999999 4 0 la\nE\n", "more than a day"),
        ("#BPM:300\nE\n", "has no notes"),
    ],
)
def test_bad_timings_files_are_refused_naming_what_is_wrong(env, vocals, tmp_path, content, needle):
    timings = tmp_path / ("t.txt" if content.startswith("#") else "t.json")
    timings.write_bytes(content.encode("utf-8"))
    result = ugpu("run", str(vocals), "--no-separation", "--timings", str(timings), "-o", str(tmp_path / "o"), timeout=60)
    assert_clean_failure(result, 1, str(timings), needle)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# -- 5. model files ----------------------------------------------------------------------------------
@pytest.fixture
def broken_models(models_dir, tmp_path):
    """A copy of the models folder with a truncated whisper checkpoint and a broken demucs bag."""
    root = tmp_path / "models"
    for path in models_dir.rglob("*"):
        if path.is_file():
            (root / path.relative_to(models_dir)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(models_dir)).write_bytes(path.read_bytes())
    data = (root / "whisper" / "small.pt").read_bytes()
    (root / "whisper" / "small.pt").write_bytes(data[: len(data) // 2])
    import shutil

    shutil.rmtree(root / "faster-whisper", ignore_errors=True)  # the CPU's backend converts from small.pt again
    return root


def test_damaged_model_files_give_one_line_naming_the_file_and_the_fix(broken_models, tmp_path):
    audio = write_wav(tmp_path / "Band - Song.wav", song(4.0), 44_100)
    models = {"UGPU_MODELS": str(broken_models)}
    for args in (["whisper", str(audio), "--model", "small"], ["run", str(audio), "-o", str(tmp_path / "o")]):
        result = ugpu(*args, env=models)
        assert_clean_failure(result, 1, str(broken_models / "whisper" / "small.pt"), "damaged",
                             "ugpu models pull whisper --backend openai-whisper --model small --force")  # fmt: skip
    verify = ugpu("models", "verify", "whisper", "--backend", "openai-whisper", "--model", "small", env=models)
    assert_clean_failure(verify, 1, "small.pt", "does not match the published release")
    (broken_models / "demucs" / "htdemucs_ft.yaml").write_text("models: [unclosed\nweights: {")
    for args in (["run", str(audio), "-o", str(tmp_path / "o2")], ["models", "verify"], ["demucs", str(audio)]):
        result = ugpu(*args, env=models)
        assert_clean_failure(result, 1, "htdemucs_ft.yaml", "damaged", "--force")


def test_a_damaged_demucs_model_is_named_with_the_fix(broken_models, tmp_path):
    audio = write_wav(tmp_path / "Band - Song.wav", song(4.0), 44_100)
    vocals_model = broken_models / "demucs" / "04573f0d.th"
    data = vocals_model.read_bytes()
    vocals_model.write_bytes(data[:1000] + bytes(len(data) - 1000))  # zeroed past the first kilobyte
    models = {"UGPU_MODELS": str(broken_models)}
    assert_clean_failure(ugpu("demucs", str(audio), env=models), 1, str(vocals_model), "damaged",
                         "ugpu models pull demucs --model htdemucs_ft --force")  # fmt: skip
    assert_clean_failure(ugpu("models", "verify", "demucs", env=models), 1, "04573f0d.th")


# -- 6. fallback flags -------------------------------------------------------------------------------
def test_every_rung_failing_stops_the_song_with_a_clear_message(env, vocals, words, tmp_path):
    faults = [a for n in range(1, 5) for a in ("--rehearse-fault", f"crepe:{n}:oom")]  # 512, 256, 128, 64
    result = ugpu("run", str(vocals), "--no-separation", "--timings", str(words), "-o", str(tmp_path / "o"), *faults)
    assert_clean_failure(result, 1, "crepe failed on every rung of its fallback ladder", "1 of 1 song(s) failed")


# -- 7. the database ---------------------------------------------------------------------------------
def _without_write_override() -> list[str]:
    """A prefix that runs a command as root without the capability to write others' files."""
    import shutil

    if os.geteuid() != 0:
        return []
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("capsh is needed to make a database root cannot write")
    return [capsh, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner,cap_linux_immutable", "--"]


def test_a_read_only_database_runs_without_logging_and_saving_says_why(env, vocals, words, tmp_path):
    db = tmp_path / "ro" / "ugpu.db"
    db.parent.mkdir()
    Store.open(db).close()
    db.chmod(0o444)
    db.parent.chmod(0o555)  # no journal can be made beside it either
    try:
        prefix = _without_write_override()
        code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"

        def run(*args: str) -> subprocess.CompletedProcess:
            command = [sys.executable, "-c", code, *args]
            if prefix:  # capsh runs a shell command line
                command = [*prefix, "-c", " ".join(shlex.quote(a) for a in command)]
            return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                                  env={**os.environ, "UGPU_DB": str(db)})  # fmt: skip

        done = run("run", str(vocals), "--no-separation", "--timings", str(words), "-o", str(tmp_path / "out"))
        assert done.returncode == 0, done.stderr
        assert "read-only" in done.stderr and "not logged" in done.stderr and "Traceback" not in done.stderr
        assert (tmp_path / "out" / "Known - Melody" / "Known - Melody.txt").is_file()
        saved = run("crepe", "--step-size", "20", "--save")
        assert_clean_failure(saved, 1, str(db), "read-only", "chmod")
        assert run("stats").returncode == 0
        assert run("optimize", "--json").returncode == 0
    finally:
        db.parent.chmod(0o755)
        db.chmod(0o644)


# -- 8. numbers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["optimize", "--assume-vram", "inf"], ["optimize", "--assume-vram", "nan"], ["optimize", "--assume-vram", "-8"],
        ["optimize", "--assume-vram", "1e12"], ["optimize", "--vram-limit", "inf"], ["detect", "--vram-limit", "-1"],
        ["optimize", "--gpu", "-1"], ["monitor", "--interval", "inf"], ["monitor", "--interval", "nan"],
        ["monitor", "--count", "0"], ["monitor", "--alert", "temp=inf"], ["monitor", "--alert", "vram=-5"],
        ["crepe", "--batch-size", "1e30"], ["crepe", "--batch-size", "99999999999999999999", "--save"],
        ["demucs", "--overlap", "nan", "--save"], ["demucs", "--overlap", "inf"], ["crepe", "--step-size", "-10"],
        ["fallback", "--limit", "0"], ["run", "x.wav", "--vram-limit", "nan"], ["stats", "--since", "yesterday"],
    ],
)  # fmt: skip
def test_absurd_numbers_exit_2_without_a_traceback(args):
    result = invoke(*args)
    assert result.exit_code == 2, (args, result.output)
    assert "Traceback" not in result.output


# -- 9. the last line of defence -----------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_and_a_log_file(monkeypatch, tmp_path):
    from ultrasinger_gpu_cli.usecases import plan

    def boom(*args, **kwargs):
        raise ZeroDivisionError("a bug nobody expected")

    monkeypatch.setattr(plan, "quick_target", boom)
    result = invoke("optimize")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unexpected error (ZeroDivisionError: a bug nobody expected)" in result.stderr
    (log,) = (tmp_path / "logs").glob("ugpu-crash-*.log")
    assert str(log) in result.stderr.replace("\n", "")
    assert "Traceback" in log.read_text() and "a bug nobody expected" in log.read_text()


HOSTILE = [
    ["run"], ["run", "-"], ["run", "/dev/zero", "-o", "/tmp/ugpu-hostile"], ["run", "/", "-o", "/tmp/ugpu-hostile"],
    ["run", "/nonexistent/song.mp3"], ["whisper", "/etc/passwd"], ["demucs", "/dev/null"], ["crepe", "/proc/self/status"],
    ["crepe", "/proc/self/status", "-o", "/proc"], ["run", "x.mp3", "--timings", "/etc/shadow-missing"],
    ["models", "list", "vocoder"], ["models", "pull", "whisper", "--model", "gigantic"], ["stats", "--component", "x"],
    ["stats", "--since", "not a date\x01"], ["optimize", "--assume-cc", "abc", "--assume-vram", "8"], ["--db", "/proc/ugpu.db", "stats"],
    ["--db", "/", "stats"], ["monitor", "--gpu", "99"], ["whisper", "--language", "\n", "/dev/null"],
    ["detect", "--gpu", "GPU-nope"], ["fallback", "--gpu", "x"],
]  # fmt: skip


@pytest.mark.parametrize("args", HOSTILE, ids=lambda a: " ".join(a)[:40])
def test_hostile_command_lines_never_print_a_traceback(env, args, tmp_path):
    logs = tmp_path / "logs"
    result = ugpu(*args, timeout=120, env={"UGPU_LOG_DIR": str(logs)})
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode in (0, 1, 2, 3), output
    # Each is an error ugpu expects and explains, not one its last line of defence caught.
    assert "unexpected error" not in output, output
    assert not logs.exists() or not any(logs.iterdir()), output


# -- the first run on a fresh machine --------------------------------------------------------------------
class _Mirror(SimpleHTTPRequestHandler):
    """A loopback model mirror: honours Range; ``cut`` truncates the next full response."""

    cut: list[int] = []
    seen_ranges: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        return None

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        requested = self.headers.get("Range")
        if requested:
            self.seen_ranges.append(requested)
            start = int(requested.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.cut and not requested:
            body = body[: self.cut.pop()]
        self.wfile.write(body)


@pytest.fixture
def mirror(models_dir, tmp_path, monkeypatch):
    """A loopback HTTP server with the CPU plan's weights, named as the real hosts name them:
    whisper's table and demucs's list of files point at it (with the test models' checksums)."""
    import whisper

    from tests.model_factory import FT_SIGNATURES
    from ultrasinger_gpu_cli.weights import models
    from ultrasinger_gpu_cli.files import sha256_of

    served = tmp_path / "mirror"
    checkpoint = models_dir / "whisper" / "small.pt"
    digest = sha256_of(checkpoint)
    (served / digest).mkdir(parents=True)
    (served / digest / "small.pt").write_bytes(checkpoint.read_bytes())
    demucs_urls = {}
    for sig in FT_SIGNATURES:
        data = (models_dir / "demucs" / f"{sig}.th").read_bytes()
        name = f"{sig}-{__import__('hashlib').sha256(data).hexdigest()[:8]}.th"
        (served / "demucs").mkdir(exist_ok=True)
        (served / "demucs" / name).write_bytes(data)
        demucs_urls[sig] = name
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Mirror, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    _Mirror.cut, _Mirror.seen_ranges = [], []
    monkeypatch.setitem(whisper._MODELS, "small", f"{base}/{digest}/small.pt")
    monkeypatch.setattr(models, "_remote_files", lambda: {s: f"{base}/demucs/{n}" for s, n in demucs_urls.items()})
    monkeypatch.delenv("UGPU_OFFLINE")
    monkeypatch.delenv("UGPU_MODELS", raising=False)
    yield server
    server.shutdown()


def test_a_fresh_machine_converts_a_song_fetching_every_missing_weight(mirror, fast_whisper, tmp_path):
    """What `make run SONG=...` does on a new machine with internet (the internet: a loopback mirror)."""
    song_file = write_wav(tmp_path / "Band - First.wav", song(6.0), 44_100)
    result = CliRunner().invoke(app, ["run", str(song_file), "--language", "en", "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("downloading it once") == 2 and result.stderr.count("checksum checked") == 2
    assert "whisper small: downloaded, checksum checked, then converted" in result.stderr  # for faster-whisper
    hub = Path(os.environ["HOME"]) / ".cache" / "torch" / "hub" / "checkpoints"
    assert [p.name.split("-")[0] for p in hub.glob("*.th")] == ["04573f0d"]  # only the vocals model of the bag
    report = json.loads(result.stdout)["songs"][0]
    assert [s["stage"] for s in report["stages"]] == ["demucs", "whisper", "crepe"]


def test_the_first_run_fetches_missing_weights_checks_them_and_converts(mirror, fast_whisper, vocals, tmp_path):
    cached = Path(os.environ["HOME"]) / ".cache" / "whisper" / "small.pt"
    result = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--language", "en", "-o", str(tmp_path / "o"),
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "is not on this machine: downloading it once" in result.stderr and "checksum checked" in result.stderr
    assert cached.is_file() and not list(cached.parent.glob(".*.download"))
    assert Path(json.loads(result.stdout)["songs"][0]["files"]["ultrastar"]).is_file()


def test_an_interrupted_download_leaves_no_model_and_resumes(mirror, fast_whisper, vocals, tmp_path):
    cached = Path(os.environ["HOME"]) / ".cache" / "whisper" / "small.pt"
    _Mirror.cut = [1000]
    first = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--language", "en", "-o", str(tmp_path / "o")])
    assert first.exit_code == 1 and "Traceback" not in first.output
    assert "resumes" in first.stderr and not cached.exists()
    assert (cached.parent / ".small.pt.download").stat().st_size == 1000
    again = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "--language", "en", "-o", str(tmp_path / "o")])
    assert again.exit_code == 0, again.output
    assert _Mirror.seen_ranges == ["bytes=1000-"] and cached.is_file()


def test_offline_and_an_unreachable_mirror_fail_at_once_saying_so(mirror, vocals, tmp_path, monkeypatch):
    import socket

    import whisper

    offline = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "-o", str(tmp_path / "o"), "--offline"])
    assert offline.exit_code == 1 and "is not on this machine" in offline.stderr and "ugpu models pull" in offline.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "-o", str(tmp_path / "o")]).exit_code == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setitem(whisper._MODELS, "small", f"http://127.0.0.1:{port}/{'0' * 64}/small.pt")
    dead = CliRunner().invoke(app, ["run", str(vocals), "--no-separation", "-o", str(tmp_path / "o")])
    assert dead.exit_code == 1 and "Traceback" not in dead.output
    assert f"from 127.0.0.1:{port} failed" in dead.stderr and "check the internet connection" in dead.stderr
    assert _Mirror.seen_ranges == []
