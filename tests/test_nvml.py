"""The one NVML module: the real no-GPU path of this machine and fake cards."""

from __future__ import annotations

import pynvml
import pytest

from tests.fake_nvml import card_6gb_no_temp, h100, lost_card, make_fake_nvml, rtx_5060_ti
from ultrasinger_gpu_cli.gpu.nvml import Nvml, format_cuda_version, get_nvml


def test_real_machine_without_nvidia_driver_reports_unavailable_without_raising():
    session = Nvml()  # the real pynvml: this machine has no NVIDIA driver
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on a machine with a driver
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    assert session.available is False
    assert "driver" in session.unavailable_reason
    assert session.gpus() == []
    assert session.device_count() == 0
    assert session.driver_version() is None
    assert session.cuda_driver_version() is None
    assert session.processes(0) == []


def test_reads_every_field_of_an_rtx_5060_ti():
    session = Nvml(make_fake_nvml([rtx_5060_ti()], driver="575.51.03", cuda=12090))
    (gpu,) = session.gpus()
    assert gpu.name == "NVIDIA GeForce RTX 5060 Ti"
    assert gpu.uuid == "GPU-5060ti-0000"
    assert gpu.vram_total_mb == 16311 and gpu.vram_total_gb == 16
    assert gpu.vram_used_mb == 500 and gpu.vram_free_mb == 16311 - 500
    assert gpu.compute_capability == "12.0" and gpu.sm == "sm_120"
    assert gpu.temperature_c == 45
    assert gpu.power_limit_w == 180.0 and gpu.power_draw_w == 25.0
    assert gpu.utilization_gpu_percent == 3
    assert (gpu.pcie_gen, gpu.pcie_width, gpu.pcie_gen_max, gpu.pcie_width_max) == (4, 16, 4, 16)
    assert gpu.lost is False
    assert session.driver_version() == "575.51.03"
    assert session.cuda_driver_version() == "12.9"


def test_unsupported_field_reads_as_none_and_the_rest_still_reads():
    session = Nvml(make_fake_nvml([card_6gb_no_temp()]))
    (gpu,) = session.gpus()
    assert gpu.temperature_c is None
    assert gpu.vram_total_mb == 6144
    assert gpu.name == "NVIDIA GeForce RTX 2060"
    assert gpu.lost is False


def test_gpu_lost_mid_query_is_marked_lost_and_the_others_still_show():
    session = Nvml(make_fake_nvml([h100(), lost_card(), rtx_5060_ti()]))
    gpus = session.gpus()
    assert [g.lost for g in gpus] == [False, True, False]
    assert "lost" in gpus[1].error.lower()
    assert gpus[0].name.startswith("NVIDIA H100") and gpus[2].vram_total_gb == 16


def test_static_facts_are_cached_so_a_sample_costs_few_calls():
    fake = make_fake_nvml([rtx_5060_ti()])
    session = Nvml(fake)
    session.gpus()
    fake.calls.clear()
    sample = session.sample(0)
    names = [name for name, _ in fake.calls]
    assert "nvmlDeviceGetName" not in names and "nvmlDeviceGetCudaComputeCapability" not in names
    assert len(names) <= 8
    assert sample.vram_used_mb == 500 and sample.vram_total_mb == 16311


def test_missing_function_in_an_old_pynvml_reads_as_none():
    fake = make_fake_nvml([rtx_5060_ti()])
    del fake.nvmlDeviceGetFanSpeed
    (gpu,) = Nvml(fake).gpus()
    assert gpu.fan_percent is None and gpu.name is not None


def test_init_failure_is_described_not_raised():
    fake = make_fake_nvml([])

    def boom():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    fake.nvmlInit = boom
    session = Nvml(fake)
    assert session.available is False
    assert "not loaded" in session.unavailable_reason


@pytest.mark.parametrize(("raw", "text"), [(12090, "12.9"), (13000, "13.0"), (12020, "12.2"), (None, None), (0, None)])
def test_cuda_version_format(raw, text):
    assert format_cuda_version(raw) == text


def test_process_wide_session_follows_the_installed_backend(fake_gpus):
    fake_gpus(h100())
    assert [g.vram_total_gb for g in get_nvml().gpus()] == [80]
