"""How the server runs (:class:`ServeConfig`, given by ``ugpu serve`` and never changed), its
database, and the plan of each of its workers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
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
    workers: int | None = None  # None: one per GPU, else one
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

    @property
    def folders(self) -> ServerFolders:
        return ServerFolders(self.data_root, self.music_root)


def needs_token(host: str) -> bool:
    return host not in LOOPBACK


def open_store(config: ServeConfig) -> Store:
    return Store.open(config.db_path)


def worker_plans(config: ServeConfig) -> list[tuple[str, Any]]:
    """One worker per GPU PyTorch can run (or ``--workers`` on the first one / the CPU): (name, plan(store, mode)).
    Several workers on the CPU share its cores: each engine gets its share of the threads."""
    from ultrasinger_gpu_cli.usecases.plan import run_target, worker_plan

    with open_store(config) as store:
        first = run_target(store, 0)
        on_gpus = bool(first.is_gpu and first.torch_can_run)
        count = 1
        if on_gpus and config.workers is None:  # one per card PyTorch runs
            from ultrasinger_gpu_cli.gpu.nvml import get_nvml

            count = max(1, get_nvml().device_count())
    selectors = list(range(count)) if config.workers is None else [0] * config.workers
    if not on_gpus and len(selectors) > 1:  # CPU workers: the cores shared out among their engines
        from ultrasinger_gpu_cli.gpu.devices import share_cores

        share_cores(len(selectors))

    def planner(selector: int):
        def plan(store: Store, mode: str):
            return worker_plan(store, selector, mode)

        return plan

    names = [f"gpu{s}" if on_gpus else "cpu" for s in selectors]
    return [(f"{n}-{i}" if len(selectors) > 1 else n, planner(s)) for i, (n, s) in enumerate(zip(names, selectors))]


def new_token() -> str:
    return secrets.token_urlsafe(24)
