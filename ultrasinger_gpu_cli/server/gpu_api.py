"""The design's GPU API (``/api/gpu/...``), the models and the workers' plans: each route parses,
calls a use case and returns the document ``--json`` prints."""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ultrasinger_gpu_cli.server.config import ServeConfig, open_store


class ConfigureRequest(BaseModel):
    """The design's ``POST /api/gpu/configure_component``."""

    component: Literal["whisper", "demucs", "crepe"]
    model: Optional[str] = None
    batch_size: Optional[int] = None
    device_override: Optional[Literal["cuda", "cpu"]] = None


class InitializeRequest(BaseModel):
    """The design's ``POST /api/gpu/initialize``."""

    force_detection: bool = False
    optimization_mode: Literal["conservative", "balanced", "aggressive"] = "balanced"
    vram_limit: Optional[float] = Field(default=None, gt=0, le=1024, allow_inf_nan=False)


def gpu_routes(config: ServeConfig) -> APIRouter:
    """The GPU API's routes for a server of ``config`` (the caller adds the token check)."""
    router = APIRouter()

    @router.post("/api/gpu/initialize")
    def initialize(body: InitializeRequest = InitializeRequest()) -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.reports import initialize_response
        from ultrasinger_gpu_cli.usecases.plan import detect_machine

        with open_store(config) as store:
            found = detect_machine(store, mode=body.optimization_mode, vram_limit_gb=body.vram_limit,
                                   force=body.force_detection)  # fmt: skip
            return initialize_response(found.detection, found.plan, force_detection=body.force_detection)

    @router.get("/api/gpu/monitor")
    def monitor() -> dict[str, Any]:
        return monitor_document(config)

    @router.post("/api/gpu/configure_component")
    def configure(body: ConfigureRequest) -> dict[str, Any]:
        from ultrasinger_gpu_cli.plan.detection import plan_for, quick_target
        from ultrasinger_gpu_cli.usecases.reports import configure_component_response
        from ultrasinger_gpu_cli.usecases.plan import configure_component, validated_flags

        flags = {"model": body.model, "batch_size": body.batch_size, "device": body.device_override}
        given = validated_flags(body.component, flags, save=True, reset=False, audio=False)
        with open_store(config) as store:
            plan_for(store, quick_target(store), flags={body.component: given})  # refused here: nothing stored
            done = configure_component(store, body.component, given, save=True)
            return configure_component_response(done.plan, body.component, override=done.override, action=done.action)

    @router.get("/api/gpu/optimize")
    def optimize(mode: Literal["conservative", "balanced", "aggressive"] = "balanced",
                 vram_limit: Optional[float] = None) -> dict[str, Any]:  # fmt: skip
        from ultrasinger_gpu_cli.usecases.reports import optimize_response
        from ultrasinger_gpu_cli.usecases.plan import optimize as plan_optimize

        with open_store(config) as store:
            result = plan_optimize(store, mode=mode, vram_limit_gb=vram_limit)
            return optimize_response(result.plan, cuda_version=result.cuda_version, saved=None)

    @router.get("/api/gpu/fallback")
    def fallback(mode: Literal["conservative", "balanced", "aggressive"] = "balanced") -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.plan import fallback_ladders

        with open_store(config) as store:
            return fallback_ladders(store, mode=mode).to_dict()

    @router.get("/api/gpu/stats")
    def stats(component: Optional[str] = None, since: Optional[str] = None) -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.reports import stats_response
        from ultrasinger_gpu_cli.usecases.history import component_stats

        with open_store(config) as store:
            return stats_response(component_stats(store, component=component, since=since))

    @router.get("/api/models")
    def models() -> dict[str, Any]:
        from ultrasinger_gpu_cli.usecases.models import listing_response, model_statuses

        with open_store(config) as store:
            statuses = model_statuses(store, models_dir=config.models_dir)
        return listing_response(statuses)


    @router.get("/api/plan")
    def plan_view() -> dict[str, Any]:
        return plans(config)

    return router


def plans(config: ServeConfig) -> dict[str, Any]:
    """Each worker's plan, with every setting's reason (what the page shows)."""
    from ultrasinger_gpu_cli.usecases.reports import component_report

    out = []
    with open_store(config) as store:
        for name, plan in config.workers_resolved.plans:
            p = plan(store, "balanced")
            out.append({"worker": name, "target": p.target.to_dict(), "tier": p.tier.label, "mode": p.mode,
                        "vram_budget_mb": p.vram_budget_mb, "notes": list(p.notes),
                        "components": {c: component_report(cp) for c, cp in p.components.items()}})  # fmt: skip
    return {"workers": out}


def monitor_document(config: ServeConfig) -> dict[str, Any]:
    """The design's monitor fields (of the first GPU, or the host), every GPU under ``gpus``, each
    with the plan's VRAM budget for its card."""
    from ultrasinger_gpu_cli.gpu.monitoring import Monitor

    with open_store(config) as store:
        snapshot = Monitor(store=store).snapshot(processes=False)
    # The plans give each card's budget: only worth resolving where there is a card to show.
    budgets = {w["target"].get("gpu_index"): w["vram_budget_mb"] for w in plans(config)["workers"]} if snapshot.gpus else {}
    records = [{**r, "vram_budget_mb": budgets.get(r.get("gpu_index"))} for r in snapshot.ndjson_records()]
    first = records[0]
    return {"vram_used": first["vram_used"], "vram_free": first["vram_free"], "gpu_utilization": first["gpu_utilization"],
            "temperature": first["temperature"], "processing_speed": snapshot.processing_speed,
            "gpu_detected": bool(snapshot.gpus), "note": first.get("note"), "gpus": records}  # fmt: skip
