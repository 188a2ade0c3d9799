"""The tier table: how ugpu runs Whisper, Demucs and CREPE for each amount of VRAM.

This is the one place the defaults live. Rows are keyed by the card's VRAM in whole GB
(a "16 GB" card reports about 15.9 GiB and counts as 16); the mode then scales batches
and the share of VRAM ugpu allows itself. The resolver (:mod:`.resolver`) checks every
cell against :func:`estimate_vram_mb` so no cell asks for more memory than the tier has.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("conservative", "balanced", "aggressive")

DEMUCS_SAMPLE_RATE = 44_100
#: HTDemucs was trained on 7.8 s segments and cannot take a longer chunk.
DEMUCS_MAX_CHUNK = int(7.8 * DEMUCS_SAMPLE_RATE)  # 343980 samples
DEMUCS_MIN_CHUNK = 44_100

#: Memory the CUDA context and allocator take before any model (counted by nvidia-smi).
CUDA_CONTEXT_MB = 400


@dataclass(frozen=True)
class Tier:
    """A row of the tier table: a range of VRAM. Each component's defaults for the row live in
    its spec (``components/<name>.py``, ``tier_defaults``)."""

    key: str
    label: str
    min_gb: int | None  # inclusive; None for the CPU row
    max_gb: int | None  # exclusive; None for "and above"
    why: str

    @property
    def is_cpu(self) -> bool:
        return self.min_gb is None


CPU_TIER = Tier("cpu", "no GPU", None, None,
                "CPU: float32, Whisper small (turbo runs at ~0.2x real time on 2 cores), CREPE tiny at 10 ms")

#: GPU rows, smallest first.
GPU_TIERS = (
    Tier("lt4", "< 4 GB", 0, 4, "2-3 GB cards: Whisper small, one Demucs chunk at a time"),
    Tier("4-6", "4-6 GB", 4, 6, "Whisper small: turbo (1.6 GB of float16 weights) with a useful batch leaves no headroom on 4-5 GB"),
    Tier("6-8", "6-8 GB", 6, 8, "turbo with a batch of 8; the 6-8 GB cards UltraSinger users most often run out of memory on"),
    Tier("8-12", "8-12 GB", 8, 12, "room for batched Whisper, two Demucs chunks per pass and CREPE full at 5 ms"),
    Tier("12-16", "12-16 GB", 12, 16, "large batches for every engine"),
    Tier("16-24", "16-24 GB", 16, 24, "the design's RTX 5060 Ti 16 GB settings"),
    Tier("24+", ">= 24 GB", 24, None, "workstation and data-centre cards: the largest batches"),
)  # fmt: skip

ALL_TIERS = (CPU_TIER, *GPU_TIERS)

#: Below this a card is not worth using: the plan runs on the CPU.
MIN_USABLE_GPU_MB = 1536


@dataclass(frozen=True)
class Mode:
    key: str
    batch_factor: float
    vram_fraction: float  # the share of the card's VRAM ugpu allows itself
    demucs_chunk: int | None  # None: keep the tier's
    why: str


MODE_TABLE = {
    "conservative": Mode("conservative", 0.5, 0.70, None, "half batches, at most 70% of VRAM: room for other programs"),
    "balanced": Mode("balanced", 1.0, 0.85, None, "the tier's batches, at most 85% of VRAM"),
    "aggressive": Mode(
        "aggressive", 2.0, 0.95, DEMUCS_MAX_CHUNK, "double batches, 7.8 s Demucs chunks, up to 95% of VRAM"
    ),
}


def tier_for_vram(vram_gb: int | None) -> Tier:
    """The row for a card of ``vram_gb`` whole GB; ``None`` or 0 is the CPU row."""
    if not vram_gb:
        return CPU_TIER
    for tier in GPU_TIERS:
        if tier.max_gb is None or vram_gb < tier.max_gb:
            return tier
    return GPU_TIERS[-1]  # pragma: no cover - the last row is open-ended


def tier_by_key(key: str) -> Tier:
    for tier in ALL_TIERS:
        if tier.key == key:
            return tier
    raise KeyError(key)
