"""Loading Whisper (issue 22, item 5): ``whisper.load_model`` (the reference way, then float16 as
ugpu computes on a GPU, or float32 as on the CPU) against ugpu's :func:`load_whisper`, on a
checkpoint of large-v3-turbo's shape with random weights saved in float16 as whisper's releases
are (1.6 GB; no real weights can be fetched here). Each load in a fresh process, the file in the
page cache; host time and peak memory up to the model ready to move to its device.

Run: ``python -m benchmarks.whisper_load [ROUNDS]`` (Markdown on stdout).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TURBO = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_vocab=51866,
             n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=4)  # fmt: skip


def _build(path: Path) -> None:
    import torch
    from whisper.model import ModelDimensions, Whisper

    model = Whisper(ModelDimensions(**TURBO)).half()
    torch.save({"dims": TURBO, "model_state_dict": model.state_dict()}, path)


def _load(path: str, way: str, precision: str) -> None:
    import resource
    import time

    import whisper

    from ultrasinger_gpu_cli.engines.whisper_engine import half_weights, load_whisper

    started = time.perf_counter()
    model = whisper.load_model(path, device="cpu") if way == "whisper.load_model" else load_whisper(path)
    model = half_weights(model) if precision == "float16" else model.float()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def main(rounds: int = 3) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large-v3-turbo.pt"
        _build(path)
        for precision in ("float16", "float32"):
            found: dict[str, list[dict]] = {"whisper.load_model": [], "ugpu load_whisper": []}
            for _ in range(rounds):
                for way in found:
                    done = subprocess.run([sys.executable, "-m", "benchmarks.whisper_load", "--one", str(path), way,
                                           precision], cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
                    found[way].append(json.loads(done.stdout))
            ref, ours = (statistics.median(r["seconds"] for r in found[w]) for w in found)
            ref_mb, ours_mb = (max(r["peak_mb"] for r in found[w]) for w in found)
            rows.append(f"| {precision} | {ref:.2f} s | {ours:.2f} s | **{ref / ours:.1f}x** | {ref_mb:.0f} MB | {ours_mb:.0f} MB |")
    return "\n".join([
        f"Whisper large-v3-turbo's shape (float16 checkpoint, 1.6 GB), host side of a load, median of {rounds} fresh processes:", "",
        "| computes in | `whisper.load_model` | ugpu `load_whisper` | ratio | peak RSS, reference | peak RSS, ugpu |",
        "|---|---|---|---|---|---|", *rows,
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        sys.path.insert(0, str(ROOT))
        _load(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
