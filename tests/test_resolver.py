"""The resolver: every tier x mode cell runnable, the design's example, limits, overrides."""

from __future__ import annotations

import pytest

from ultrasinger_gpu_cli.components import SPECS
from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.gpu.facts import GpuIdentity
from ultrasinger_gpu_cli.plan.resolver import PlanTarget, resolve, validate_setting
from ultrasinger_gpu_cli.plan.tiers import ALL_TIERS, GPU_TIERS, MODES, tier_for_vram

RTX_5060_TI = PlanTarget("NVIDIA GeForce RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-5060ti"), torch_can_run=True)

#: The keys the design's ``POST /api/gpu/initialize`` response has per component (../shared/DESIGN.md).
DESIGN_KEYS = {
    "whisper": ("model", "batch_size", "compute_type"),
    "demucs": ("model", "chunk_size", "overlap"),
    "crepe": ("model_capacity", "step_size", "device"),
}


def _gpu(gb: float, cc: str = "8.6") -> PlanTarget:
    return PlanTarget(f"{gb} GB card", int(gb * 1024) - 60, cc, GpuIdentity(0, "GPU-test"), torch_can_run=True)


def test_design_example_16gb_balanced_exactly():
    plan = resolve(RTX_5060_TI)
    assert plan.optimization_applied() == {
        "whisper": {"model": "large-v3-turbo", "batch_size": 32, "compute_type": "float16"},
        "demucs": {"model": "htdemucs_ft", "chunk_size": 262144, "overlap": 0.25},
        "crepe": {"model_capacity": "full", "step_size": 5, "device": "cuda"},
    }
    assert plan.components["demucs"].value("batch_size") == 4
    assert plan.components["crepe"].value("step_size") == 5
    assert plan.tier.key == "16-24"
    assert plan.notes == ()


def test_api_keys_are_exactly_the_designs():
    plan = resolve(RTX_5060_TI)
    assert {c: tuple(v) for c, v in plan.optimization_applied().items()} == DESIGN_KEYS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tier", GPU_TIERS, ids=lambda t: t.key)
def test_every_gpu_cell_is_runnable(tier, mode):
    """At the smallest card of each tier every stage fits its VRAM budget or is moved to the CPU."""
    plan = resolve(_gpu(max(2, tier.min_gb)), mode)
    assert plan.tier == tier
    for name, cplan in plan.components.items():
        for parameter, setting in cplan.settings.items():
            assert validate_setting(name, parameter, setting.value) == setting.value
            assert setting.reason and setting.source in ("tier", "mode", "hardware")
        if cplan.device == "cuda":
            assert cplan.estimated_vram_mb == SPECS[name].estimate_vram_mb(cplan.typed())
            assert cplan.estimated_vram_mb <= plan.vram_budget_mb, (name, cplan.values())
        else:
            assert cplan.settings["device"].source == "hardware"


@pytest.mark.parametrize("mode", MODES)
def test_cpu_cells_are_cpu_appropriate(mode):
    plan = resolve(PlanTarget("CPU: test"), mode)
    assert plan.tier.key == "cpu" and plan.vram_budget_mb is None
    values = {c: p.values() for c, p in plan.components.items()}
    assert {v["device"] for v in values.values()} == {"cpu"}
    assert values["whisper"]["compute_type"] == "int8" and values["whisper"]["backend"] == "faster-whisper"
    assert values["whisper"]["model"] in ("tiny", "base", "small")
    assert values["crepe"]["model"] == "tiny" or values["crepe"]["step_size"] >= 10


def test_mode_scales_batches_with_source_mode():
    balanced = resolve(RTX_5060_TI, "balanced").components["whisper"]
    conservative = resolve(RTX_5060_TI, "conservative").components["whisper"]
    aggressive = resolve(RTX_5060_TI, "aggressive").components["whisper"]
    assert conservative.value("batch_size") < balanced.value("batch_size") < aggressive.value("batch_size")
    assert aggressive.settings["batch_size"].source == "mode"
    assert resolve(RTX_5060_TI, "aggressive").components["demucs"].value("chunk_size") == 343980


def test_vram_limit_plans_as_a_smaller_card():
    limited = resolve(RTX_5060_TI, vram_limit_gb=8)
    assert limited.tier == tier_for_vram(8) and limited.tier.key == "8-12"
    assert limited.vram_budget_mb <= 8 * 1024
    assert limited.optimization_applied()["whisper"]["batch_size"] == 16
    assert any("8 GB" in n for n in limited.notes)
    assert limited.memory_fraction == pytest.approx(limited.vram_budget_mb / 16311, abs=1e-3)


def test_vram_limit_above_the_card_changes_nothing():
    assert resolve(RTX_5060_TI, vram_limit_gb=48).tier.key == "16-24"


@pytest.mark.parametrize(("gb", "key"), [(2, "lt4"), (4, "4-6"), (6, "6-8"), (8, "8-12"), (12, "12-16"),
                                         (15.93, "16-24"), (16, "16-24"), (24, "24+"), (80, "24+")])  # fmt: skip
def test_tier_boundaries_use_the_marketed_size(gb, key):
    assert resolve(PlanTarget("x", int(gb * 1024), "8.6", torch_can_run=True)).tier.key == key


def test_overrides_win_and_flags_win_over_overrides():
    plan = resolve(
        RTX_5060_TI,
        overrides={"whisper": {"model": "medium", "batch_size": 8}},
        flags={"whisper": {"batch_size": 2}},
    )
    whisper = plan.components["whisper"]
    assert whisper.value("model") == "medium" and whisper.settings["model"].source == "override"
    assert whisper.value("batch_size") == 2 and whisper.settings["batch_size"].source == "flag"


def test_device_cpu_override_takes_cpu_settings_for_that_component_only():
    plan = resolve(RTX_5060_TI, overrides={"whisper": {"device": "cpu", "compute_type": "float16"}})
    whisper = plan.components["whisper"]
    assert whisper.device == "cpu" and whisper.value("compute_type") == "float32"
    assert whisper.settings["compute_type"].source == "hardware"
    assert whisper.estimated_vram_mb is None
    assert plan.components["demucs"].device == "cuda"


def test_torch_that_cannot_run_the_card_plans_the_cpu_and_says_how_to_fix_it():
    target = PlanTarget(
        "NVIDIA GeForce RTX 5060 Ti", 16311, "12.0", GpuIdentity(0, "GPU-x"), torch_can_run=False,
        torch_reason="PyTorch 2.6.0 has no kernels for sm_120", torch_fix="pip install ... cu128",
    )  # fmt: skip
    plan = resolve(target)
    assert {p.device for p in plan.components.values()} == {"cpu"}
    assert any("cu128" in n for n in plan.notes)
    assert "sm_120" in plan.components["whisper"].settings["device"].reason


def test_pre_volta_card_gets_float32_whisper():
    plan = resolve(PlanTarget("GTX 1060", 6144, "6.1", torch_can_run=True))
    assert plan.components["whisper"].value("compute_type") == "float32"
    assert plan.components["whisper"].settings["compute_type"].source == "hardware"


def test_hypothetical_target_is_marked():
    plan = resolve(PlanTarget("RTX 4090", 24 * 1024, "8.9", hypothetical=True))
    assert plan.to_dict()["hypothetical"] is True
    assert any("hypothetical" in n for n in plan.notes)


def test_user_batch_that_does_not_fit_is_kept_and_warned_about():
    plan = resolve(_gpu(4), flags={"whisper": {"batch_size": 200}})
    whisper = plan.components["whisper"]
    assert whisper.value("batch_size") == 200 and whisper.settings["batch_size"].source == "flag"
    assert whisper.settings["model"].source == "tier" and whisper.device == "cuda"  # nothing shrunk
    assert any(n.startswith("whisper:") and "budget" in n and "fallback" in n for n in plan.notes)


def test_whisper_steps_down_a_model_with_its_batch_before_going_to_the_cpu():
    whisper = resolve(_gpu(16), "conservative", vram_limit_gb=1.2).components["whisper"]  # small does not fit at batch 1
    assert whisper.device == "cuda"
    assert whisper.value("model") == "base" and whisper.settings["model"].source == "hardware"
    assert whisper.value("batch_size") == 2  # the batch it started with, not the halved one


def test_table_default_that_does_not_fit_moves_that_stage_to_the_cpu():
    plan = resolve(_gpu(2), "conservative")  # a 2 GB card keeps 70%: no room for a Demucs chunk
    demucs = plan.components["demucs"]
    assert demucs.device == "cpu" and demucs.settings["device"].source == "hardware"
    assert plan.components["whisper"].device == "cuda"


@pytest.mark.parametrize(
    ("component", "parameter", "value", "needle"),
    [
        ("whisper", "model", "huge", "large-v3-turbo"),
        ("whisper", "batch_size", 0, "1 to 256"),
        ("whisper", "batch_size", -4, "1 to 256"),
        ("whisper", "device", "gpu2", "cuda, cpu"),
        ("demucs", "chunk_size", 10_000_000, "44100"),
        ("demucs", "overlap", 1.5, "0 to 0.9"),
        ("crepe", "model", "large", "full, tiny"),
        ("crepe", "model_capacity", "tiny", "valid settings"),  # one model key for every component
        ("whisper", "backend", "faster", "openai-whisper"),
        ("crepe", "step_size", 0, "1 to 100"),
        ("crepe", "colour", "red", "valid settings"),
    ],
)
def test_invalid_values_are_refused_listing_the_valid_choices(component, parameter, value, needle):
    with pytest.raises(InvalidSettingError) as info:
        validate_setting(component, parameter, value)
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_invalid_mode_and_limit():
    with pytest.raises(InvalidSettingError, match="conservative, balanced, aggressive"):
        resolve(RTX_5060_TI, "turbo")
    for bad in (0, -8, float("inf"), float("nan"), 1e9):
        with pytest.raises(InvalidSettingError, match="above 0"):
            resolve(RTX_5060_TI, vram_limit_gb=bad)


def test_turbo_alias_is_normalised():
    assert validate_setting("whisper", "model", "turbo") == "large-v3-turbo"


def test_tier_table_is_complete_and_ordered():
    keys = [t.key for t in ALL_TIERS]
    assert keys == ["cpu", "lt4", "4-6", "6-8", "8-12", "12-16", "16-24", "24+"]
    bounds = [(t.min_gb, t.max_gb) for t in GPU_TIERS]
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gb", [48, 80, 141])
def test_the_largest_cards_get_settings_every_stage_takes(gb, mode):
    """A mode's larger batches stop at the most a stage takes (aggressive on an 80 GB card asked
    CREPE for 8192 frames a batch, which its settings refuse: the run failed at its first stage)."""
    plan = resolve(_gpu(gb), mode)
    for name, cplan in plan.components.items():
        for parameter, setting in cplan.settings.items():
            assert validate_setting(name, parameter, setting.value) == setting.value
        cplan.typed()
    crepe = plan.components["crepe"].settings["batch_size"]
    if mode == "aggressive":
        assert crepe.value == 4096 and "4096, the most CREPE takes" in crepe.reason


def test_a_batch_separates_the_next_song_ahead_only_where_the_vram_budget_holds_both():
    from ultrasinger_gpu_cli.plan.tiers import CUDA_CONTEXT_MB

    first_user = resolve(RTX_5060_TI)
    ahead = first_user.ahead
    assert ahead.enabled and ahead.peak_mb <= first_user.vram_budget_mb and "beside" in ahead.why
    weights = {n: SPECS[n].estimate_weights_mb(c.typed()) for n, c in first_user.components.items()}
    working = {n: c.estimated_vram_mb - CUDA_CONTEXT_MB - weights[n] for n, c in first_user.components.items()}
    # every model loaded, Demucs' working memory and the larger of the others' at once
    assert ahead.peak_mb == CUDA_CONTEXT_MB + sum(weights.values()) + working["demucs"] + max(working["whisper"],
                                                                                              working["crepe"])  # fmt: skip
    assert max(c.estimated_vram_mb for c in first_user.components.values()) < ahead.peak_mb < first_user.pipeline_peak_mb
    assert first_user.to_dict()["separate_ahead"] == {"enabled": True, "estimated_peak_mb": ahead.peak_mb,
                                                      "why": ahead.why}  # fmt: skip
    small = resolve(_gpu(8))
    assert not small.ahead.enabled and small.ahead.peak_mb > small.vram_budget_mb
    assert f"{small.ahead.peak_mb} MB, over the {small.vram_budget_mb} MB VRAM budget" in small.ahead.why
    cpu = resolve(PlanTarget("CPU: test")).ahead
    assert not cpu.enabled and cpu.peak_mb is None and "CPU" in cpu.why
    # the rest on the CPU: Demucs alone on the card, beside CPU stages
    alone = resolve(_gpu(8), overrides={"whisper": {"device": "cpu"}, "crepe": {"device": "cpu"}}).ahead
    assert alone.enabled and alone.peak_mb == resolve(_gpu(8)).components["demucs"].estimated_vram_mb
    # a Demucs backend that may draw random numbers is seeded per song: never beside Whisper
    from ultrasinger_gpu_cli.components import DEMUCS

    DEMUCS.register("test-random", "tests.no_such_module")
    try:
        seeded = resolve(RTX_5060_TI, flags={"demucs": {"backend": "test-random"}}).ahead
    finally:
        DEMUCS.backends.pop("test-random")
    assert not seeded.enabled and "may draw random numbers" in seeded.why


def test_a_cpu_batch_gets_a_lane_per_song_while_the_cores_and_the_memory_last():
    from ultrasinger_gpu_cli.plan.lanes import LANE_BASE_MB, RAM_SHARE, batch_lanes, lane_ram_mb

    cpu = resolve(PlanTarget("CPU: test"))
    lane = lane_ram_mb(cpu)
    weights = {n: SPECS[n].estimate_weights_mb(c.typed()) for n, c in cpu.components.items()}
    assert lane > LANE_BASE_MB + sum(weights.values())  # and the largest stage's working memory
    plenty = 100 * lane
    two = batch_lanes(cpu, 4, 2, plenty)
    assert (two.count, two.threads) == (2, 1) and "2 songs at once" in two.why and "the cores" in two.why
    three = batch_lanes(cpu, 3, 8, plenty)  # fewer songs than cores: the cores shared out among them
    assert (three.count, three.threads) == (3, 2) and "the songs" in three.why
    tight = batch_lanes(cpu, 4, 8, int(2.5 * lane / RAM_SHARE))
    assert (tight.count, tight.threads) == (2, 4) and "the memory" in tight.why
    assert batch_lanes(cpu, 4, 8, int(lane / RAM_SHARE)).count == 1
    assert batch_lanes(cpu, 1, 8, plenty).count == 1 and batch_lanes(cpu, 4, 1, plenty).count == 1
    unsized = batch_lanes(cpu, None, 6, plenty)
    assert unsized.count == 6 and "up to 6 songs" in unsized.why
    asked = batch_lanes(cpu, 4, 2, 0, asked=3)  # as asked, even past the cores and the memory
    assert (asked.count, asked.threads) == (3, 1) and batch_lanes(cpu, 2, 2, plenty, asked=3).count == 2
    assert two.to_dict() == {"lanes": 2, "threads_per_lane": 1, "estimated_lane_ram_mb": lane, "why": two.why}
    gpu = batch_lanes(resolve(RTX_5060_TI), 4, 16, plenty)
    assert gpu.count == 1 and "GPU" in gpu.why
    assert "several songs at once" in cpu.ahead.why


def test_a_module_another_thread_is_importing_is_waited_for_never_taken_half_made(tmp_path, monkeypatch):
    """``gpu.devices.imported`` (what seeds torch, sets its threads and frees its memory without
    importing it): a server's two workers load their engines at once, and one thread's seeding
    met torch half imported by the other ("partially initialized module 'torch' has no
    attribute 'manual_seed'")."""
    import sys
    import threading
    import time

    from ultrasinger_gpu_cli.gpu.devices import imported

    (tmp_path / "ugpu_slow_module.py").write_text("import time\ntime.sleep(1.0)\nready = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert imported("ugpu_slow_module") is None  # not imported: not imported for the asking
    assert "ugpu_slow_module" not in sys.modules
    loader = threading.Thread(target=__import__, args=("ugpu_slow_module",))
    try:
        loader.start()
        deadline = time.monotonic() + 10
        while "ugpu_slow_module" not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "ugpu_slow_module" in sys.modules and not hasattr(sys.modules["ugpu_slow_module"], "ready")  # half made
        assert imported("ugpu_slow_module").ready is True
    finally:
        loader.join(10)
        sys.modules.pop("ugpu_slow_module", None)


def test_the_engines_threads_follow_the_process_budget(monkeypatch):
    import psutil

    from ultrasinger_gpu_cli.gpu.devices import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == (psutil.cpu_count(logical=False) or psutil.cpu_count())
