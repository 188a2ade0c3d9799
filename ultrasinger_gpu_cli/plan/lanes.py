"""How a batch runs where the plan has no GPU: in lanes, several songs at once.

On the CPU the engines' own threads scale poorly (Whisper tiny.en on CTranslate2, measured on
2 cores: 6.9 s on one thread, 5.5-6.2 s on two), so a batch converts more songs per minute as
several songs each on a share of the cores than as one song on all of them. A lane is a worker
process with its own engines and its share of the cores as its threads; a batch gets one lane
per song while the cores and the memory last (each lane holds every model it uses, loaded, and
a song's audio). Where the plan runs on a GPU, a batch is one pipeline per card (the card's
memory is what bounds it: :attr:`~.resolver.Plan.ahead`, ``--gpus``/``--per-gpu``).

Pure: the cores and memory are given (:func:`ultrasinger_gpu_cli.usecases.plan.host_lanes` reads
this machine's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ultrasinger_gpu_cli.plan.resolver import Plan

#: A lane's process before its models: Python with the engines' libraries imported (about 320 MB)
#: and a song's audio in its working copies (a 288-s song's whole run without separation peaked
#: at 850 MB with Whisper tiny.en and SwiftF0).
LANE_BASE_MB = 1000
#: The share of the memory available now that the lanes may take (the rest: the system, the
#: process that hands out the songs).
RAM_SHARE = 0.8


@dataclass(frozen=True)
class Lanes:
    """Songs converted at once in a batch, each lane with ``threads`` CPU threads, and why."""

    count: int
    threads: int | None  # each lane's CPU threads; None: one lane, with the libraries' own count
    lane_ram_mb: int | None  # the estimated memory of one lane; None where lanes do not apply
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"lanes": self.count, "threads_per_lane": self.threads, "estimated_lane_ram_mb": self.lane_ram_mb,
                "why": self.why}  # fmt: skip


def lane_ram_mb(plan: Plan) -> int:
    """One lane's estimated memory: its process and song, every stage's model loaded, and the
    largest stage's working memory (its stages run one at a time)."""
    stages = plan.components.values()
    return LANE_BASE_MB + sum(c.weights_mb for c in stages) + max((c.working_mb for c in stages), default=0)


def batch_lanes(plan: Plan, songs: int | None, cores: int | None, ram_available_mb: int | None,
                asked: int | None = None) -> Lanes:  # fmt: skip
    """The lanes of a batch of ``songs`` (None: a batch of any size, as ``ugpu optimize`` shows it)
    on ``cores`` CPU cores with ``ram_available_mb`` free; ``asked``: the user's count (``--lanes``)."""
    if plan.uses_gpu:
        return Lanes(1, None, None, "the plan runs on a GPU: " + plan.ahead.why)
    cores = max(1, cores or 1)
    lane = lane_ram_mb(plan)
    if asked is not None:
        count = max(1, asked if songs is None else min(asked, songs))
        threads = max(1, cores // count)
        return Lanes(count, threads if count > 1 else None, lane,
                     f"{count} song(s) at once, as asked (--lanes), {threads} thread(s) each")  # fmt: skip
    fit = max(1, int((ram_available_mb or 0) * RAM_SHARE) // lane)
    count = min(cores, fit, songs if songs is not None else cores)
    if count <= 1:
        why = ("one song" if songs is not None and songs <= 1 else
               f"one song at a time: {cores} core(s)" if cores <= 1 else
               f"one song at a time: a lane needs about {lane} MB and {ram_available_mb} MB are free")  # fmt: skip
        return Lanes(1, None, lane, why)
    threads = max(1, cores // count)
    limit = ("the songs" if songs is not None and count == songs else
             "the cores" if count == cores else f"the memory ({ram_available_mb} MB free, about {lane} MB a lane)")  # fmt: skip
    what = f"{count} songs at once" if songs is not None else f"up to {count} songs at once"
    each = f"{threads} thread" + ("s" if threads > 1 else "")
    return Lanes(count, threads, lane, f"on the CPU, a batch converts {what}, each in a worker process with {each} "
                                       f"(bounded by {limit}); --lanes 1 converts one at a time")  # fmt: skip
