"""How the server runs (:class:`ServeConfig`, given by ``ugpu serve`` and never changed), its
database, and the plan of each of its workers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.errors import InvalidSettingError
from ultrasinger_gpu_cli.store.db import Store
from ultrasinger_gpu_cli.store.jobs import QueueOwner
from ultrasinger_gpu_cli.usecases.jobs import ServerFolders

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServeConfig:
    """How the server runs; built by ``ugpu serve`` (or a test) and never changed after."""

    db_path: Path
    data_root: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    workers: int | None = None  # None: one per GPU, else a CPU batch's lanes (:func:`worker_plans`)
    max_upload_mb: int = 500
    queue_limit: int = 100
    music_root: Path | None = None
    cors_origin: list[str] = field(default_factory=list)
    models_dir: Path | None = None
    run_extra: dict[str, Any] = field(default_factory=dict)  # RunOptions for every job (tests: rehearsals)
    ray: bool = False  # jobs run on Ray actors
    ray_address: str | None = None
    max_minutes: float | None = None  # the longest song a job may be (None: UGPU_MAX_MINUTES, else 120)
    owner: QueueOwner | None = None  # the queue's lock, when the caller took it before the server starts
    overlap: bool = True  # a worker opens its next job and writes its last one's files while the engines run

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise InvalidSettingError("the token is empty: an empty token would let anyone in",
                                      hint="give --token a secret (or leave it out to have one generated)")  # fmt: skip
        if self.token is None and needs_token(self.host):
            raise InvalidSettingError(f"serving on {self.host} (beyond loopback) needs a token", hint="--token SECRET")

    @cached_property
    def workers_resolved(self) -> Workers:
        """The workers (:func:`worker_plans`), resolved on first use and kept: the page's plans
        are the running workers' even after their models took memory."""
        return worker_plans(self)

    @property
    def folders(self) -> ServerFolders:
        return ServerFolders(self.data_root, self.music_root)


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


def open_store(config: ServeConfig) -> Store:
    return Store.open(config.db_path)


@dataclass(frozen=True)
class Workers:
    """The server's workers: a name and a planner (``plan(store, mode)``) each, where they run
    and why that many."""

    plans: list[tuple[str, Any]]
    on_gpus: bool
    why: str

    def share_cores(self) -> None:
        """Several workers on the CPU share its cores: each engine gets its share of the threads
        (called once, as the workers start)."""
        if not self.on_gpus and len(self.plans) > 1:
            from ultrasinger_gpu_cli.gpu.devices import share_cores

            share_cores(len(self.plans))


def worker_plans(config: ServeConfig) -> Workers:
    """One worker per GPU PyTorch can run; on the CPU, as many as a batch's lanes (songs converted
    at once while the cores and the memory free last: :func:`~ultrasinger_gpu_cli.plan.lanes.batch_lanes`);
    ``--workers`` on the first GPU or the CPU. :attr:`ServeConfig.workers_resolved` keeps the
    server's (the memory free changes once they run)."""
    from ultrasinger_gpu_cli.usecases.plan import host_lanes, run_target, worker_plan

    with open_store(config) as store:
        first = run_target(store, 0)
        on_gpus = bool(first.is_gpu and first.torch_can_run)
        count, why = 1, "one worker"
        if config.workers is not None:
            count, why = config.workers, f"{config.workers} worker(s), as asked (--workers)"
        elif config.ray:  # the actors' count is the cluster's (the server's own plan: one)
            why = "jobs run on Ray actors"
        elif on_gpus:  # one per card PyTorch runs
            from ultrasinger_gpu_cli.gpu.nvml import get_nvml

            count = max(1, get_nvml().device_count())
            why = f"one worker per GPU ({count})"
        else:
            lanes = host_lanes(worker_plan(store, 0, "balanced"), None)
            count, why = lanes.count, lanes.why
            if count > 1:
                why = (f"on the CPU, {count} songs at once, {lanes.threads} thread(s) each (as a batch's lanes: "
                       "the cores and the memory free); --workers sets it")  # fmt: skip
    selectors = list(range(count)) if config.workers is None and on_gpus else [0] * count

    def planner(selector: int):
        def plan(store: Store, mode: str):
            return worker_plan(store, selector, mode)

        return plan

    names = [f"gpu{s}" if on_gpus else "cpu" for s in selectors]
    plans = [(f"{n}-{i}" if len(selectors) > 1 else n, planner(s)) for i, (n, s) in enumerate(zip(names, selectors))]
    return Workers(plans, on_gpus, why)


def new_token() -> str:
    return secrets.token_urlsafe(24)
