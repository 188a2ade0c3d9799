"""The design's API response shapes, built from core objects (what ``--json`` prints).

Kept out of the CLI so an HTTP API or a batch runner returns exactly the same documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ultrasinger_gpu_cli.gpu.facts import Detection
from ultrasinger_gpu_cli.plan.lanes import Lanes
from ultrasinger_gpu_cli.plan.resolver import ComponentPlan, Plan
from ultrasinger_gpu_cli.store.stats import ComponentStats


def _plan_fields(plan: Plan) -> dict[str, Any]:
    return {
        "optimization_mode": plan.mode,
        "vram_limit": plan.vram_limit_gb,
        "tier": plan.tier.key,
        "vram_budget_mb": plan.vram_budget_mb,
        "memory_fraction": plan.memory_fraction,
        "hypothetical": plan.target.hypothetical,
        "target": plan.target.to_dict(),
        "components": {c: component_report(p) for c, p in plan.components.items()},
        "separate_ahead": plan.ahead.to_dict(),
        "notes": list(plan.notes),
    }


def initialize_response(detection: Detection, plan: Plan, *, force_detection: bool) -> dict[str, Any]:
    """``POST /api/gpu/initialize``: the design's four keys first, then the details."""
    target = plan.target
    return {
        "gpu_detected": detection.gpu_detected,
        "vram_total": target.vram_total_gb,
        "cuda_version": detection.cuda_driver_version,
        "optimization_applied": plan.optimization_applied(),
        "force_detection": force_detection,
        "frameworks_from_cache": detection.frameworks.from_cache,
        "driver_version": detection.driver_version,
        "nvml_error": detection.nvml_error,
        "gpus": [g.to_dict() for g in detection.gpus],
        "compatibility": [c.to_dict() for c in detection.compatibility],
        "host": detection.host.to_dict(),
        "frameworks": detection.frameworks.to_dict(),
        "warnings": list(detection.warnings),
        **_plan_fields(plan),
    }


def optimize_response(plan: Plan, *, cuda_version: str | None, saved: dict[str, str] | None,
                      lanes: Lanes | None = None) -> dict[str, Any]:  # fmt: skip
    """``/gpu/optimize``: the same core keys as initialize, for the planned card; ``lanes``: how
    ``ugpu run`` converts a batch on this machine."""
    return {
        "gpu_detected": plan.target.is_gpu,
        "vram_total": plan.target.vram_total_gb,
        "cuda_version": cuda_version,
        "optimization_applied": plan.optimization_applied(),
        **_plan_fields(plan),
        **({"batch_lanes": lanes.to_dict()} if lanes is not None else {}),
        "saved_config_ids": saved,
    }


def component_report(cplan: ComponentPlan) -> dict[str, Any]:
    return {
        "settings": {name: s.to_dict() for name, s in cplan.settings.items()},
        "estimated_vram_mb": cplan.estimated_vram_mb,
    }


def configure_component_response(
    plan: Plan, component: str, *, override: Mapping[str, Any], action: str | None
) -> dict[str, Any]:
    """``POST /api/gpu/configure_component``: the component's resolved settings."""
    cplan = plan.components[component]
    return {
        "component": component,
        "action": action,
        "model": cplan.model,
        "batch_size": cplan.value("batch_size"),
        "backend": cplan.value("backend"),
        "device_override": override.get("device"),
        "stored_override": dict(override),
        "optimization_mode": plan.mode,
        "tier": plan.tier.key,
        **component_report(cplan),
    }


def stats_response(stats: list[ComponentStats]) -> dict[str, Any]:
    return {"components": [s.to_dict() for s in stats]}
