"""Whisper: lyrics with word timings. Everything ugpu knows about the component."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultrasinger_gpu_cli.weights.checksums import WHISPER_ALIASES
from ultrasinger_gpu_cli.components.base import ComponentSpec, Parameter, Precision, StageIO, StageOptions, StageOutputs
from ultrasinger_gpu_cli.components.base import common_parameters, model_parameter
from ultrasinger_gpu_cli.components.settings import SettingValue, StageSettings
from ultrasinger_gpu_cli.plan.tiers import CUDA_CONTEXT_MB, Tier

MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
)  # fmt: skip
#: Smaller models to step down to when a model does not fit, largest first.
STEP_DOWN = ("large-v3-turbo", "medium", "small", "base", "tiny")
SAMPLE_RATE = 16_000
#: The languages Whisper's tokenizer knows (every backend shares them), as their codes.
LANGUAGES = tuple(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru "
    "sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue".split()
)


def check_language(code: str | None) -> str | None:
    """A language code as Whisper takes it (case does not matter), None for "detect it"; an
    unknown or empty code is refused before any model loads, with the list."""
    from ultrasinger_gpu_cli.errors import InvalidSettingError

    if code is None:
        return None
    wanted = code.strip().lower()
    if wanted not in LANGUAGES:
        what = f"--language {code[:20]!r} is not a language Whisper knows" if code.strip() else "--language is empty"
        raise InvalidSettingError(what,
                                  hint=f"leave --language out to detect it, or give one of: {' '.join(LANGUAGES)}")  # fmt: skip
    return wanted

def check_model_language(model: str, language: str | None) -> None:
    """An English-only model (``tiny.en`` ... ``medium.en``) hears English: another language asked
    of it is refused before anything runs (the libraries quietly transcribe English instead, and
    the chart would say ``#LANGUAGE:German`` over English words)."""
    from ultrasinger_gpu_cli.errors import InvalidSettingError

    if model.endswith(".en") and language not in (None, "en"):
        raise InvalidSettingError(f"--language {language}: the Whisper model {model} hears English only",
                                  hint=f"leave --language out, or choose a multilingual model: ugpu whisper --model "
                                       f"{model.removesuffix('.en')} --save")  # fmt: skip


# Rough memory model: it only has to keep every cell of the tier table clear of the budget.
# Weights in millions of parameters; activations per batch item in MB (fp16).
_PARAMS_M = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large-v1": 1550, "large-v2": 1550,
             "large-v3": 1550, "large-v3-turbo": 809}  # fmt: skip
_ACT_MB = {"tiny": 20, "base": 30, "small": 60, "medium": 110, "large-v1": 160, "large-v2": 160, "large-v3": 160,
           "large-v3-turbo": 150}  # fmt: skip


_WEIGHT_BYTES = {"float16": 2, "int8_float16": 1, "int8": 1}


@dataclass(frozen=True)
class WhisperSettings(StageSettings):
    """Whisper's settings: the model, voiced chunks of <= 30 s per batch, the precision, the
    beams of its search."""

    beam_size: int = 1  # 1: greedy decoding


# Decoder layers and width per model: each extra beam holds its own self- and cross-attention
# keys and values (the 1500 audio frames and up to 448 tokens, per layer).
_DECODER = {"tiny": (4, 384), "base": (6, 512), "small": (12, 768), "medium": (24, 1024), "large-v1": (32, 1280),
            "large-v2": (32, 1280), "large-v3": (32, 1280), "large-v3-turbo": (4, 1280)}  # fmt: skip


#: Goes up whenever the words a model hears in the same audio change (the heads that time them, how
#: chunks are joined): the stage cache keys Whisper's words by it, so no word timed the old way is reused.
WORDS_VERSION = 2
#: The same for the words ``--lyrics`` times (how its lines are placed on what Whisper heard): only
#: runs with lyrics key their words by it, so a change there keeps every other run's words (and the
#: seed of their temperature fallback, drawn from the key).
LYRICS_VERSION = 2  # 2: a stretched word after words Whisper did not hear is no anchor


def word_heads(layers: int, heads: int) -> tuple[tuple[int, int], ...]:
    """The decoder's cross-attention heads whose attention times the words, as (layer, head):
    every head of the decoder's upper half, on every backend and model.

    A release's own alignment heads (``whisper._ALIGNMENT_HEADS``, the ``alignment_heads`` of
    faster-whisper's published folders) are the few heads OpenAI found to follow speech best. On
    sung audio those heads lock onto the held vowel, so their word starts lie late; the average
    of every upper-half head (whisper's own choice for a model without known heads) follows the
    singer's attack (BENCHMARKS.md, "Real songs": with tiny.en, raw faster-whisper's median
    onset error against hand charts 109 -> 54 ms and 104 -> 72 ms on the two shared songs)."""
    return tuple((layer, head) for layer in range(layers // 2, layers) for head in range(heads))


def canonical(name: str) -> str:
    """The model's size class: English-only models are their multilingual twin's size."""
    name = name.removesuffix(".en")
    return WHISPER_ALIASES.get(name, name)


def _weights_mb(s: WhisperSettings) -> float:
    # float16 on CUDA stores float16 weights (the engine halves all but LayerNorm), int8 one byte
    # per weight (CTranslate2), else float32.
    return _PARAMS_M[canonical(s.model)] * _WEIGHT_BYTES.get(s.compute_type, 4)


def estimate_weights_mb(s: WhisperSettings) -> int:
    return int(_weights_mb(s))


def estimate_vram_mb(s: WhisperSettings) -> int:
    model = canonical(s.model)
    weights = _weights_mb(s)
    # Activations are float16 unless the compute is float32.
    width = 4 if s.compute_type in ("float32", "int8") else 2
    acts = _ACT_MB[model] * max(1, s.batch_size) * width / 2
    layers, state = _DECODER[model]
    beams = max(1, s.beam_size) - 1  # the extra beams' keys, values and audio features
    beam_mb = max(1, s.batch_size) * beams * (2 * layers * (1500 + 448) + 1500) * state * width / 2**20
    return int(CUDA_CONTEXT_MB + weights + acts + beam_mb)


def tier_reason(parameter: str, value: SettingValue, tier: Tier) -> str | None:
    if parameter == "batch_size":
        return f"{value} voiced chunks of <= 30 s per forward pass"
    if parameter == "beam_size":
        if tier.is_cpu:
            return (f"beam search over {value} hypotheses, as faster-whisper and whisper's command line do: on real "
                    "songs it recognises more of the sung words than greedy decoding")  # fmt: skip
        return "greedy decoding: each extra beam holds the decoder's keys and values per chunk (beam_size 5 with --save)"
    return None


def precision(on_gpu: bool, compute_capability: str | None) -> Precision:
    if not on_gpu:
        return Precision("float32", "the CPU has no fast float16 path; whisper would fall back anyway", "tier")
    if compute_capability and tuple(int(x) for x in compute_capability.split(".")) < (7, 0):
        from ultrasinger_gpu_cli.gpu.facts import sm_name

        return Precision("float32", f"{sm_name(compute_capability)} has no fast float16 (tensor cores arrive with sm_70)",
                         "hardware")  # fmt: skip
    return Precision("float16", "float16 halves weights and activations on tensor-core GPUs", "tier")


def ctranslate2_cuda_precision(compute_capability: str | None) -> tuple[str, str]:
    """faster-whisper's compute type on a card: int8 weights with float16 compute where the card
    has tensor cores (sm_70+), int8 where CTranslate2 has int8 kernels (sm_61+), else float32."""
    from ultrasinger_gpu_cli.gpu.facts import sm_name

    cc = tuple(int(x) for x in compute_capability.split(".")) if compute_capability else (0, 0)
    sm = sm_name(compute_capability) or "this card"
    if cc >= (7, 0):
        return ("int8_float16", "int8 weights, float16 compute: about half float16's VRAM; where cuBLAS refuses int8 "
                "(CUBLAS_STATUS_NOT_SUPPORTED, seen on Blackwell) the ladder's next step is float16")  # fmt: skip
    if cc >= (6, 1):
        return "int8", f"{sm} has no fast float16 (tensor cores arrive with sm_70); CTranslate2 runs int8 from sm_61"
    return "float32", f"{sm} has neither CTranslate2's int8 (sm_61+) nor fast float16 (sm_70+)"


def _call(engine: Any, samples: Any, progress: Any, options: StageOptions) -> Any:
    check_model_language(engine.settings.model, options.language)
    return engine.run(samples, progress, language=options.language)


def _outputs(stem: str, options: StageOptions) -> tuple[str, ...]:
    return f"{stem}.words.json", f"{stem}.srt", f"{stem}.lrc"


def _write(transcript: Any, folder: Path, stem: str, options: StageOptions) -> StageOutputs:
    from ultrasinger_gpu_cli.files import write_text
    from ultrasinger_gpu_cli.song.formats import sung_lines, to_lrc, to_srt

    text = json.dumps(transcript.to_dict(), indent=2, ensure_ascii=False)
    words, srt, lrc = _outputs(stem, options)
    lines = sung_lines(transcript.segments, transcript.language)  # a subtitle or lyrics line each, not a 30-s window
    files = {
        "json": write_text(folder / words, text),
        "srt": write_text(folder / srt, to_srt(lines)),
        "lrc": write_text(folder / lrc, to_lrc(lines)),
    }
    details: dict[str, SettingValue] = {"language": transcript.language or "", "segments": len(transcript.segments),
                                        "words": len(transcript.words)}  # fmt: skip
    return StageOutputs(files, transcript.no_vocals, details)


WHISPER: ComponentSpec[WhisperSettings] = ComponentSpec(
    name="whisper",
    title="Whisper",
    settings_type=WhisperSettings,
    parameters=(
        model_parameter("whisper", "whisper model", MODELS, aliases={"turbo": "large-v3-turbo"}),
        Parameter("beam_size", "beam size", "int", low=1, high=10),
        *common_parameters("whisper", max_batch=256),
    ),
    api_keys=(("model", "model"), ("batch_size", "batch_size"), ("compute_type", "compute_type")),
    batch_unit="voiced chunks of <= 30 s",
    fallback_floor=1,
    tier_defaults={
        "cpu": {"model": "small", "batch_size": 4, "beam_size": 5},
        "lt4": {"model": "small", "batch_size": 4, "beam_size": 1},
        "4-6": {"model": "small", "batch_size": 8, "beam_size": 1},
        "6-8": {"model": "large-v3-turbo", "batch_size": 8, "beam_size": 1},
        "8-12": {"model": "large-v3-turbo", "batch_size": 16, "beam_size": 1},
        "12-16": {"model": "large-v3-turbo", "batch_size": 24, "beam_size": 1},
        "16-24": {"model": "large-v3-turbo", "batch_size": 32, "beam_size": 1},
        "24+": {"model": "large-v3-turbo", "batch_size": 48, "beam_size": 1},
    },
    estimate_vram_mb=estimate_vram_mb,
    estimate_weights_mb=estimate_weights_mb,
    tier_reason=tier_reason,
    precision=precision,
    io=StageIO(SAMPLE_RATE, 1, _call, _write, lambda transcript: transcript.no_vocals, _outputs),
    step_down_models=STEP_DOWN,
    table_columns=(("Whisper model", "model", "{}"), ("Whisper batch", "batch_size", "{}")),
    # Measured (BENCHMARKS.md, "Whisper backends"): on the CPU, CTranslate2 int8 runs the same
    # chunks faster in under half the memory and loads in a fifth of the time. GPUs keep
    # openai-whisper until a GPU has measured faster-whisper.
    tier_backends={"cpu": ("faster-whisper", "CTranslate2 int8 runs the CPU's Whisper stage 1.5x (short lines) to "
                                             "2.0x (dense lyrics) faster in under half the memory, and loads ~5x faster")},
)

# Backends: one line each. The first is the default.
WHISPER.register("openai-whisper", "ultrasinger_gpu_cli.engines.whisper_engine",
                 requires=("torch", "whisper"), install="pip install openai-whisper")
WHISPER.register("faster-whisper", "ultrasinger_gpu_cli.engines.faster_whisper_engine",
                 requires=("faster_whisper", "ctranslate2", "torch", "whisper"), install="pip install faster-whisper",
                 compute_types=("int8", "float32", "float16", "int8_float16"),
                 precision={"cpu": ("int8", "int8 on the CPU: CTranslate2's fastest there, a quarter of float32's memory"),
                            "cuda": ctranslate2_cuda_precision})  # fmt: skip
