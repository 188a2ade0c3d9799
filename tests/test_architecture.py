"""The component registry, the one stage runner and device binding, proved end to end.

* A test-only backend registered in one line is picked up by the plan, the fallback ladder,
  ``ugpu models``, the stage commands and ``ugpu run``.
* ``ugpu crepe AUDIO`` goes through the same runner as ``ugpu run``: fallback ladder, ``runs``
  row (``ugpu monitor`` sees it while it runs), ``performance_log`` row.
* ``--gpu`` reaches PyTorch: the engine, the VRAM cap, the peak-memory counters and the NVML
  sampler all get the card the user named, although CUDA numbers the cards differently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tests import backends
from tests.audio_factory import melody, write_wav
from tests.conftest import CU128_ARCHS
from tests.fake_nvml import FakeCard
from ultrasinger_gpu_cli.cli import app
from ultrasinger_gpu_cli.components import CREPE, SPECS
from ultrasinger_gpu_cli.gpu.devices import CudaDevice, cuda_ordinal
from ultrasinger_gpu_cli.errors import GpuUnavailableError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity
from ultrasinger_gpu_cli.run.fallback import ladder
from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve
from ultrasinger_gpu_cli.store.db import Store


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def db_rows(sql: str) -> list[dict]:
    with Store.open(os.environ["UGPU_DB"]) as store:
        return [dict(r) for r in store.query(sql)]


@pytest.fixture
def test_backends():
    """Register the test-only backends the way a real one is: one line each."""
    backends.SEEN.clear()
    backends.ON_RUN.clear()
    CREPE.register("test-flaky", backends.FLAKY)
    CREPE.register("test-probe", backends.PROBE)
    yield backends.SEEN
    for name in ("test-flaky", "test-probe"):
        CREPE.backends.pop(name, None)


@pytest.fixture
def vocals(tmp_path) -> Path:
    return write_wav(tmp_path / "Test - Vocals.wav", melody([(0.5, 1.5, 60), (2.5, 1.0, 64)], 4.0)[None], 16_000)


# -- the registry ----------------------------------------------------------------------------------
def test_every_component_has_a_complete_spec():
    for name, spec in SPECS.items():
        assert spec.backends, name
        for tier_key, defaults in spec.tier_defaults.items():
            settings = spec.defaults(**defaults)  # every cell validates
            assert spec.estimate_vram_mb(settings) > 0
        assert spec.default_backend in spec.parameter("backend").valid_choices()
        assert {p.name for p in spec.parameters} >= {"model", "batch_size", "device", "backend", "compute_type"}


def test_a_registered_backend_is_in_the_plan_and_the_ladder(test_backends):
    plan = resolve(CPU_TARGET, flags={"crepe": {"backend": "test-flaky"}})
    setting = plan.components["crepe"].settings["backend"]
    assert (setting.value, setting.source) == ("test-flaky", "flag")
    rungs = ladder("crepe", plan.components["crepe"].typed(), plan.components["crepe"].typed())
    assert {r.settings.backend for r in rungs} == {"test-flaky"}
    assert [r.settings.batch_size for r in rungs] == [512, 256, 128, 64]  # down to CREPE's floor
    unregistered = resolve(CPU_TARGET)
    assert unregistered.components["crepe"].value("backend") == "swiftf0"  # the no-GPU tier's own


def test_the_cli_and_models_listing_pick_up_a_registered_backend(test_backends, vocals):
    listed = json.loads(invoke("models", "list", "crepe", "--backend", "test-flaky", "--json").stdout)
    assert [(m["engine"], m["backend"], m["model"]) for m in listed["models"]] == [("crepe", "test-flaky", "tiny")]
    assert {"component": "crepe", "backend": "test-flaky"}.items() <= next(
        b for b in listed["backends"] if b["backend"] == "test-flaky").items()  # fmt: skip
    shown = json.loads(invoke("crepe", "--backend", "test-probe", "--json").stdout)
    assert shown["settings"]["backend"] == {"value": "test-probe", "reason": "test-probe set by a flag", "source": "flag"}
    bad = CliRunner().invoke(app, ["crepe", "--backend", "nope", "--save"])
    assert bad.exit_code == 2 and "test-flaky" in bad.stderr and "torchcrepe" in bad.stderr
    assert db_rows("SELECT COUNT(*) AS n FROM component_config") == [{"n": 0}]


def test_an_uninstalled_backend_is_refused_with_the_install_command(test_backends, monkeypatch):
    from ultrasinger_gpu_cli.components.base import Backend

    missing = Backend("test-missing", backends.ProbeEngine, "needs a module nobody has", backends.PROBE.model_status)
    CREPE.register("test-missing", missing, requires=("no_such_module_here",), install="pip install no-such-module")
    try:
        result = CliRunner().invoke(app, ["crepe", "--backend", "test-missing", "--save"])
    finally:
        CREPE.backends.pop("test-missing")
    assert result.exit_code == 2
    assert "no_such_module_here" in result.stderr and "pip install no-such-module" in result.stderr


# -- one stage runner ------------------------------------------------------------------------------
def test_a_stage_command_falls_back_like_ugpu_run_and_shows_in_the_monitor(test_backends, vocals):
    invoke("crepe", "--backend", "test-flaky", "--save")  # stored: every later command uses it
    result = invoke("crepe", str(vocals), "--model", "tiny", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "test-flaky" and data["settings"]["batch_size"] == 128
    assert [(f["from"], f["to"]) for f in data["fallbacks"]] == [("cpu batch 512", "cpu batch 256"),
                                                                ("cpu batch 256", "cpu batch 128")]  # fmt: skip
    assert [s[1] for s in test_backends] == [512, 256, 128]
    assert all(live == [("crepe", True)] for _, _, live in test_backends)  # the monitor saw the run as it ran
    (run,) = db_rows("SELECT * FROM runs")
    assert (run["kind"], run["status"], run["run_id"]) == ("crepe", "done", data["run_id"])
    (log,) = db_rows("SELECT * FROM performance_log")
    assert (log["run_id"], log["backend"], log["log_id"]) == (run["run_id"], "test-flaky", data["log_id"])
    events = db_rows("SELECT stage, to_setting, device, run_id FROM fallback_events ORDER BY created_at")
    assert [(e["to_setting"], e["device"], e["run_id"]) for e in events] == [
        ("cpu batch 256", "cpu", run["run_id"]), ("cpu batch 128", "cpu", run["run_id"])]  # fmt: skip
    assert (Path(vocals).parent / "Test - Vocals.f0.csv").is_file()


def test_ugpu_run_uses_the_same_runner_and_backend(test_backends, vocals, tmp_path, models_dir, monkeypatch):
    monkeypatch.setenv("UGPU_MODELS", str(models_dir))
    words = tmp_path / "words.json"
    words.write_text(json.dumps([{"word": "la", "start": 0.5, "end": 2.0}, {"word": "lo", "start": 2.5, "end": 3.5}]))
    result = invoke("run", str(vocals), "--no-separation", "--timings", str(words), "--json", "-o", str(tmp_path / "o"),
                    "--rehearse-fault", "crepe:1:oom")  # fmt: skip
    assert result.exit_code == 0, result.output
    (song,) = json.loads(result.stdout)["songs"]
    assert [f["to"] for f in song["fallbacks"]] == ["cpu batch 256"]
    invoke("crepe", "--backend", "test-flaky", "--save")
    again = json.loads(invoke("run", str(vocals), "--no-separation", "--timings", str(words), "--json",
                              "-o", str(tmp_path / "o2")).stdout)["songs"][0]  # fmt: skip
    assert again["stages"][-1]["backend"] == "test-flaky" and again["stages"][-1]["settings"]["batch_size"] == 128


def test_no_fallback_stops_a_stage_command_at_the_first_fault(test_backends, vocals, tmp_path):
    result = CliRunner().invoke(app, ["crepe", str(vocals), "--backend", "test-flaky", "--no-fallback",
                                      "-o", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1
    assert "crepe failed on cpu batch 512: out of memory" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert [r["status"] for r in db_rows("SELECT status FROM runs")] == ["failed"]


# -- device binding --------------------------------------------------------------------------------
CARD_A = FakeCard("NVIDIA GeForce RTX 3080", "GPU-aaaaaaaa-0000", 10240, cc=(8, 6), temperature_c=41)
CARD_B = FakeCard("NVIDIA GeForce RTX 4090", "GPU-bbbbbbbb-1111", 24564, cc=(8, 9), temperature_c=77)


@pytest.fixture
def two_cards_cuda_reversed(fake_gpus, fake_torch, monkeypatch):
    """NVML: A is 0, B is 1 (PCI order). PyTorch: B is cuda:0, A is cuda:1 ("fastest first")."""
    import torch

    nvml = fake_gpus(CARD_A, CARD_B)
    fake_torch(arch_list=CU128_ARCHS + ("sm_89",), cuda_build="12.8", version="2.8.0+cu128")
    order = [CARD_B, CARD_A]
    calls: list[tuple] = []
    props = [SimpleNamespace(uuid=c.uuid.removeprefix("GPU-"), name=c.name, pci_bus_id=None) for c in order]
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: len(order))
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: props[i])
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "empty_cache", lambda: None)
    for name in ("set_per_process_memory_fraction", "synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(cuda, name, lambda *a, name=name: calls.append((name, *a)))
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: calls.append(("max_memory_allocated", device))
                        or 3 * 2**30)  # fmt: skip
    return SimpleNamespace(nvml=nvml, calls=calls)


@pytest.mark.parametrize("selector", ["1", CARD_B.uuid, "GPU-bbbb"])
def test_gpu_flag_binds_engine_cap_and_sampler_to_the_card_the_user_named(two_cards_cuda_reversed, test_backends,
                                                                         vocals, selector):  # fmt: skip
    calls = two_cards_cuda_reversed.calls
    nvml_calls = two_cards_cuda_reversed.nvml.calls
    during: list[int] = []
    backends.ON_RUN.append(lambda: during.append(len(nvml_calls)))  # NVML calls from here on are the sampler's
    result = invoke("crepe", str(vocals), "--backend", "test-probe", "--gpu", selector, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["device"], data["cuda_device"], data["gpu_index"], data["gpu_id"]) == ("cuda", "cuda:0", 1, CARD_B.uuid)
    assert test_backends[0] == ("load", "cuda:0", "cuda:0")  # the engine loads on B's CUDA ordinal
    assert test_backends[1] == ("run", "cuda:0", 1)  # ... and the sampler watches B's NVML index
    cap = [c for c in calls if c[0] == "set_per_process_memory_fraction"]
    assert len(cap) == 1 and cap[0][2] == 0  # the VRAM cap is set on cuda:0 = B
    assert {c[1] for c in calls if c[0] in ("reset_peak_memory_stats", "max_memory_allocated")} == {0}
    assert data["peak_vram_mb"] == 3072 and data["gpu_max_temperature_c"] == CARD_B.temperature_c
    (log,) = db_rows("SELECT gpu_index, gpu_id, vram_used_mb, temperature_celsius FROM performance_log")
    assert log == {"gpu_index": 1, "gpu_id": CARD_B.uuid, "vram_used_mb": 3072, "temperature_celsius": 77}
    sampled = {handle for name, handle in nvml_calls[during[0]:] if name == "nvmlDeviceGetUtilizationRates"}
    assert sampled == {1}


def test_gpu_zero_binds_to_card_a_which_cuda_calls_one(two_cards_cuda_reversed, test_backends, vocals):
    data = json.loads(invoke("crepe", str(vocals), "--backend", "test-probe", "--gpu", "0", "--json").stdout)
    assert (data["cuda_device"], data["gpu_index"]) == ("cuda:1", 0)
    cap = [c for c in two_cards_cuda_reversed.calls if c[0] == "set_per_process_memory_fraction"]
    assert cap[0][2] == 1


def test_an_unknown_gpu_is_refused_with_the_choices(two_cards_cuda_reversed, vocals):
    result = CliRunner().invoke(app, ["crepe", str(vocals), "--gpu", "GPU-cccc"])
    assert result.exit_code == 2 and CARD_A.uuid in result.stderr and CARD_B.uuid in result.stderr


def test_cuda_ordinal_by_uuid_then_by_pci_bus_id():
    devices = [CudaDevice(0, "bbbb-1111", "0000:02:00.0"), CudaDevice(1, "aaaa-0000", "0000:01:00.0")]
    assert cuda_ordinal(GpuIdentity(0, "GPU-aaaa-0000"), devices) == 1
    assert cuda_ordinal(GpuIdentity(1, "GPU-BBBB-1111"), devices) == 0
    assert cuda_ordinal(GpuIdentity(0, None, "00000000:01:00.0"), devices) == 1  # NVML's 8-digit domain
    with pytest.raises(GpuUnavailableError, match="CUDA_VISIBLE_DEVICES|not among"):
        cuda_ordinal(GpuIdentity(2, "GPU-cccc", "00000000:03:00.0"), devices)


def test_a_gpu_hidden_from_pytorch_falls_back_to_the_cpu(two_cards_cuda_reversed, test_backends, vocals, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES hides A
    data = json.loads(invoke("crepe", str(vocals), "--backend", "test-probe", "--gpu", "0", "--json").stdout)
    assert data["device"] == "cpu"
    (event,) = data["fallbacks"]
    assert event["from"].startswith("cuda") and "not among the devices PyTorch sees" in event["reason"]


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_every_real_gpu_binds_to_the_cuda_device_with_its_uuid():  # pragma: no cover - GPU machines only
    import torch

    from ultrasinger_gpu_cli.gpu.devices import bind, normalise_uuid
    from ultrasinger_gpu_cli.gpu.nvml import get_nvml

    gpus = [g for g in get_nvml().gpus() if not g.lost]
    assert gpus, "NVML sees no GPU although PyTorch does"
    for gpu in gpus:
        binding = bind(gpu.identity)
        assert normalise_uuid(str(torch.cuda.get_device_properties(binding.ordinal).uuid)) == normalise_uuid(gpu.uuid)
        assert binding.nvml_index == gpu.index and binding.name == f"cuda:{binding.ordinal}"


def test_core_modules_import_neither_typer_rich_nor_a_web_framework():
    """Library first, edges last: only the CLI (cli/, its views included) and the server (server/) may
    import Typer, rich or FastAPI/Starlette/uvicorn; the use cases and the core never do."""
    import ast

    package = Path(__file__).resolve().parent.parent / "ultrasinger_gpu_cli"
    edges = {package / "cli", package / "server"}
    banned = ("typer", "rich", "fastapi", "starlette", "uvicorn", "click")
    offenders = []
    for path in package.rglob("*.py"):
        if any(path == edge or edge in path.parents for edge in edges):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{path.relative_to(package)}: {n}" for n in names if n.split(".")[0] in banned]
    assert offenders == []
    assert (package / "usecases" / "jobs.py").is_file()  # the server's use cases live in the core
