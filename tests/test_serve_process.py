"""A real ``ugpu serve`` process on a free loopback port, driven over HTTP (restart after
``kill -9`` included), and the page in a real headless Chromium driven by Selenium (issue 13)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [server] extra (make test installs it)")
httpx = pytest.importorskip("httpx")

from tests.audio_factory import song, write_wav  # noqa: E402
from tests.test_server import check_ultrastar_zip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


class Server:
    """``ugpu serve`` in its own process; its URL read from what it prints."""

    def __init__(self, tmp_path: Path, models: Path, *args: str, db: Path | None = None) -> None:
        code = "import sys; from ultrasinger_gpu_cli.cli import main; sys.argv = ['ugpu', *sys.argv[1:]]; main()"
        env = {**os.environ, "UGPU_MODELS": str(models), "UGPU_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
        if db is not None:
            env["UGPU_DB"] = str(db)
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--port", "0", "--data-dir", str(tmp_path / "serve"), *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                if "Ctrl-C stops" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(90):
            self.kill()
            raise AssertionError("ugpu serve did not start:\n" + "".join(self.lines))
        found = re.search(r"ugpu serve: (http://[^/]+)/(#token=(\S+))?", "".join(self.lines))
        assert found, self.lines
        self.url, self.token = found.group(1), found.group(3)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def client(self, token: str | None = None, keep_alive: bool = True) -> httpx.Client:
        """``keep_alive=False``: a connection per request, for a client that pauses longer than the
        server keeps an idle connection (uvicorn: 5 s), where a request sent as the server closes
        it meets a reset, as with any HTTP/1.1 server."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, limits=limits)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait(client: httpx.Client, job_id: str, until, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not there after {timeout} s: {job}")


def test_a_real_server_converts_an_upload_and_guards_a_public_address(env, tmp_path):
    wav = write_wav(tmp_path / "Band - Song.wav", song(4.0), 44_100)
    server = Server(tmp_path, env)
    try:
        assert server.token is None  # loopback: no token needed
        with server.client() as client:
            job = client.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")}, data={"language": "en"})
            assert job.status_code == 201, job.text
            done = _wait(client, job.json()["id"], lambda j: j["status"] in ("done", "failed"))
            assert done["status"] == "done", done
            check_ultrastar_zip(client.get(done["download"]).content)
            assert client.get("/api/gpu/monitor").json()["gpu_detected"] is False
        port = server.url.rsplit(":", 1)[1]  # a second server on the same port: a clear error, exit 1
        taken = subprocess.run([sys.executable, "-m", "ultrasinger_gpu_cli", "serve", "--port", port], capture_output=True,
                               text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        server.stop()
    assert "Traceback" not in server.output
    public = Server(tmp_path, env, "--host", "0.0.0.0", db=tmp_path / "public.db")
    try:
        assert public.token and f"token (shown once; send it as Authorization: Bearer): {public.token}" in " ".join(public.output.split())
        local = public.url.replace("0.0.0.0", "127.0.0.1")
        with httpx.Client(base_url=local, timeout=30) as anonymous:
            assert anonymous.get("/api/jobs").status_code == 401
        with httpx.Client(base_url=local, timeout=30, headers={"Authorization": f"Bearer {public.token}"}) as client:
            assert client.get("/api/jobs").status_code == 200
    finally:
        public.stop()


def test_a_server_killed_mid_song_resumes_the_job_after_a_restart(env, tmp_path):
    wav = write_wav(tmp_path / "Long - Song.wav", song(12.0), 44_100)
    server = Server(tmp_path, env)
    with server.client() as client:
        job_id = client.post("/api/jobs", files={"file": (wav.name, wav.read_bytes(), "audio/wav")}).json()["id"]
        running = _wait(client, job_id, lambda j: j["status"] == "running" and j["stage"] in ("whisper", "crepe"))
        assert running["stages"][0]["stage"] == "demucs"  # separated, then killed during the next stage
    server.kill()
    restarted = Server(tmp_path, env)
    try:
        with restarted.client() as client:
            done = _wait(client, job_id, lambda j: j["status"] in ("done", "failed"))
            assert done["status"] == "done" and done["attempts"] == 2, done
            demucs = done["stages"][0]
            assert demucs["stage"] == "demucs" and demucs["cached"] is True  # resumed through the stage cache
            check_ultrastar_zip(client.get(done["download"]).content)
    finally:
        restarted.stop()


def _browser(downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("headless Chromium and chromedriver are not installed (make test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu", "--autoplay-policy=no-user-gesture-required", "--mute-audio"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def test_the_page_in_a_real_browser_uploads_watches_and_downloads(env, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wav = write_wav(tmp_path / "Band - Song.wav", song(4.0), 44_100)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    server = Server(tmp_path, env)
    driver = None
    try:
        driver = _browser(downloads)
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 300, poll_frequency=0.2)

        def text(selector: str):  # read in one step: the page redraws the GPUs and the queue every second
            return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;",
                                         selector)  # fmt: skip

        wait.until(lambda d: text("#no-gpu"))
        assert "no usable NVIDIA GPU" in text("#no-gpu")  # the page works without a GPU, and says so
        wait.until(lambda d: "reason" in d.page_source and d.find_elements(By.CSS_SELECTOR, ".plan-table td"))
        driver.find_element(By.ID, "file-input").send_keys(str(wav))

        wait.until(lambda d: text("#jobs tr[data-job-id]"))
        assert "Band - Song" in text("#jobs tr[data-job-id]")
        wait.until(lambda d: text("#jobs tr[data-job-id] .status") in ("done", "failed"))
        assert text("#jobs tr[data-job-id] .status") == "done"
        DOCS.mkdir(exist_ok=True)
        shot = tmp_path / "serve-page.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("UGPU_UPDATE_SCREENSHOT"):  # the README's screenshot comes from this test
            shutil.copy(shot, DOCS / "serve-page.png")
        driver.execute_script("document.querySelector('#jobs tr[data-job-id] .download').click()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            zips = [p for p in downloads.iterdir() if p.suffix == ".zip"]
            if zips and not any(p.name.endswith(".crdownload") for p in downloads.iterdir()):
                break
            time.sleep(0.2)
        assert [p.name for p in zips] == ["Band - Song.zip"]
        check_ultrastar_zip(zips[0].read_bytes())
        assert driver.find_element(By.ID, "message").get_attribute("class") != "error"

        # The job view: the chart ugpu drew, the song playing, a cursor moving over the notes.
        driver.execute_script("document.querySelector('#jobs tr[data-job-id] .view').click()")
        loaded = "const i = document.querySelector('#viewer-pages img'); return !!i && i.complete && i.naturalWidth"
        wait.until(lambda d: d.execute_script(loaded))
        assert driver.execute_script(loaded) == 1600  # the preview.png ugpu run wrote, fetched with the token
        assert driver.execute_script("return document.querySelector('#viewer').hidden") is False
        driver.execute_script("const a = document.querySelector('#viewer-audio'); a.currentTime = 0; a.play()")
        now = "return [document.querySelector('#viewer-audio').currentTime, " \
              "document.querySelector('#viewer-pages .cursor').hidden, " \
              "parseFloat(document.querySelector('#viewer-pages .cursor').style.left)]"
        wait.until(lambda d: d.execute_script(now)[0] > 0.4)
        first = driver.execute_script(now)
        wait.until(lambda d: d.execute_script(now)[0] > first[0] + 1.0)
        second = driver.execute_script(now)
        assert first[1] is False and second[1] is False  # the cursor is shown while the song plays
        assert second[2] > first[2] + 1.0  # and moves right with it (a 20-s row: 5% of its width a second)
        driver.save_screenshot(str(tmp_path / "job-view.png"))
        if os.environ.get("UGPU_UPDATE_SCREENSHOT"):
            shutil.copy(tmp_path / "job-view.png", DOCS / "serve-job-view.png")
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
