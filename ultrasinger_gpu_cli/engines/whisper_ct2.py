"""An openai-whisper checkpoint -> a CTranslate2 model folder that faster-whisper loads.

The faster-whisper backend needs Whisper in CTranslate2's format. Where the openai-whisper
checkpoint is on the machine already (``ugpu models pull whisper`` put it there), it is converted
here, offline and without transformers: the weights go straight into CTranslate2's
``WhisperSpec`` (openai's ``query/key/value`` fused the way CTranslate2 wants them, the decoder's
output projection tied to its token embedding, as in Whisper), and the tokenizer faster-whisper
reads (``tokenizer.json``) is rebuilt from the tiktoken ranks whisper ships, with every special
token at whisper's own id. The folder holds ``model.bin``, ``config.json``, ``vocabulary.json``,
``tokenizer.json`` and ``preprocessor_config.json`` (the mel bins faster-whisper reads).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

#: What a converted folder holds (faster-whisper's loader reads all of them).
FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json")


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(visible, chars)}


def _text(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def _merges(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """The BPE merges that reproduce tiktoken's ranks: for each multi-byte token, the two parts
    BPE reaches using only the tokens ranked before it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((_text(parts[0]), _text(parts[1])))
    return merges


def tokenizer_json(multilingual: bool, num_languages: int) -> str:
    """faster-whisper's ``tokenizer.json`` for whisper's own tokenizer (byte-level BPE)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from whisper.tokenizer import get_tokenizer

    encoding = get_tokenizer(multilingual, num_languages=num_languages).encoding
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    vocab = {_text(token): rank for token, rank in ranks.items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=_merges(ranks)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(encoding._special_tokens.items(), key=lambda item: item[1])
    assert specials[0][1] == len(ranks), "whisper's special tokens follow its ranks"
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    for name, token_id in specials:
        if tokenizer.token_to_id(name) != token_id:
            raise ValueError(f"the rebuilt tokenizer puts {name} at {tokenizer.token_to_id(name)}, whisper at {token_id}")
    return tokenizer.to_str()


def _linear(spec: Any, weight: Any, bias: Any = None) -> None:
    spec.weight = weight
    if bias is not None:
        spec.bias = bias


def _attention(spec: Any, attn: Any, *, self_attention: bool) -> None:
    import torch

    q, k, v = attn.query, attn.key, attn.value
    zero = torch.zeros_like(q.bias)  # whisper's key projection has no bias
    if self_attention:
        _linear(spec.linear[0], torch.cat([q.weight, k.weight, v.weight]), torch.cat([q.bias, zero, v.bias]))
    else:
        _linear(spec.linear[0], q.weight, q.bias)
        _linear(spec.linear[1], torch.cat([k.weight, v.weight]), torch.cat([zero, v.bias]))
    _linear(spec.linear[-1], attn.out.weight, attn.out.bias)


def _norm(spec: Any, ln: Any) -> None:
    spec.gamma, spec.beta = ln.weight, ln.bias


def _block(spec: Any, block: Any, *, decoder: bool) -> None:
    _attention(spec.self_attention, block.attn, self_attention=True)
    _norm(spec.self_attention.layer_norm, block.attn_ln)
    if decoder:
        _attention(spec.attention, block.cross_attn, self_attention=False)
        _norm(spec.attention.layer_norm, block.cross_attn_ln)
    _linear(spec.ffn.linear_0, block.mlp[0].weight, block.mlp[0].bias)
    _linear(spec.ffn.linear_1, block.mlp[2].weight, block.mlp[2].bias)
    _norm(spec.ffn.layer_norm, block.mlp_ln)


def convert(checkpoint: Path, target: Path, quantization: str | None = None) -> Path:
    """Convert an openai-whisper checkpoint into a CTranslate2 folder at ``target`` (written to a
    temporary folder and renamed: a half-converted model is never left there). The weights are
    stored in the checkpoint's own precision (float16 for whisper's releases: nothing is lost, and
    the file is half the size), unless ``quantization`` says otherwise. The folder's alignment
    heads are the ones the openai-whisper backend times words on
    (:func:`~ultrasinger_gpu_cli.components.whisper.word_heads`)."""
    import torch
    from ctranslate2.specs import whisper_spec
    from whisper.tokenizer import get_tokenizer

    from ultrasinger_gpu_cli.engines.whisper_engine import load_whisper
    from ultrasinger_gpu_cli.failures import LOAD_ERRORS
    from ultrasinger_gpu_cli.weights.models import damaged

    try:
        model = load_whisper(checkpoint)  # the checkpoint read once
        if quantization is None:  # stored as the checkpoint stores it: whisper's releases are float16
            half = all(t.dtype == torch.float16 for m in model.modules() if not isinstance(m, torch.nn.LayerNorm)
                       for t in m.parameters(recurse=False))  # fmt: skip
            quantization = "float16" if half else None
        model = model.float()
    except LOAD_ERRORS as exc:  # the checkpoint it converts from is damaged: that file is named, with its fix
        raise damaged(checkpoint, "whisper", checkpoint.stem, exc, "openai-whisper") from exc
    dims = model.dims
    spec = whisper_spec.WhisperSpec(dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head)
    enc, dec = model.encoder, model.decoder
    _linear(spec.encoder.conv1, enc.conv1.weight, enc.conv1.bias)
    _linear(spec.encoder.conv2, enc.conv2.weight, enc.conv2.bias)
    spec.encoder.position_encodings.encodings = enc.positional_embedding
    _norm(spec.encoder.layer_norm, enc.ln_post)
    for layer, block in zip(spec.encoder.layer, enc.blocks):
        _block(layer, block, decoder=False)
    spec.decoder.embeddings.weight = dec.token_embedding.weight
    spec.decoder.position_encodings.encodings = dec.positional_embedding
    _norm(spec.decoder.layer_norm, dec.ln)
    for layer, block in zip(spec.decoder.layer, dec.blocks):
        _block(layer, block, decoder=True)
    spec.decoder.projection.weight = dec.token_embedding.weight  # tied, as in whisper's logits

    multilingual = model.is_multilingual
    tokenizer = get_tokenizer(multilingual, num_languages=model.num_languages)
    encoding = tokenizer.encoding
    names = {token_id: name for name, token_id in encoding._special_tokens.items()}
    tokens = [_text(token) for token, _ in sorted(encoding._mergeable_ranks.items(), key=lambda item: item[1])]
    tokens += [names[i] for i in range(len(tokens), dims.n_vocab)]
    spec.register_vocabulary(tokens)
    heads = model.alignment_heads.to_sparse().indices().T.tolist()
    spec.config.alignment_heads = [(int(layer), int(head)) for layer, head in heads]
    spec.config.suppress_ids = list(tokenizer.non_speech_tokens)
    spec.config.suppress_ids_begin = [*tokenizer.encode(" "), tokenizer.eot]
    spec.config.lang_ids = list(tokenizer.all_language_tokens) if multilingual else []

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        spec.validate()
        spec.optimize(quantization=quantization)
        spec.save(str(work))
        (work / "tokenizer.json").write_text(tokenizer_json(multilingual, model.num_languages), encoding="utf-8")
        (work / "preprocessor_config.json").write_text(json.dumps({"feature_size": dims.n_mels, "n_mels": dims.n_mels}))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def decoder_shape(model_bin: Path) -> tuple[int, int]:
    """(decoder layers, heads per layer) of a CTranslate2 Whisper ``model.bin``, read from its
    variables' names and its ``decoder/num_heads`` without reading the weights (CTranslate2's
    format: a version, the spec's name and revision from version 5 on, then each variable's
    name, shape, type and bytes)."""
    import struct

    layers, heads = 0, 0
    with open(model_bin, "rb") as f:

        def number(fmt: str) -> int:
            return int(struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0])

        def string() -> str:
            return f.read(number("<H"))[:-1].decode("utf-8")

        try:
            if number("<I") >= 5:  # the spec's name and revision
                string()
                number("<I")
            for _ in range(number("<I")):
                name = string()
                f.seek(4 * number("<B") + 1, 1)  # the shape, the type (num_heads: an int16)
                size = number("<I")
                if name == "decoder/num_heads":
                    heads = int.from_bytes(f.read(size), "little", signed=True)
                    continue
                layer = re.match(r"decoder/layer_(\d+)/", name)
                if layer:
                    layers = max(layers, int(layer.group(1)) + 1)
                f.seek(size, 1)
        except struct.error as exc:  # cut short: a damaged download
            raise ValueError(f"{model_bin} ends inside its list of weights ({exc})") from exc
    if not (layers and heads):
        raise ValueError(f"{model_bin} holds no Whisper decoder (layers {layers}, heads {heads})")
    return layers, heads


@contextmanager
def timing_words(folder: Path) -> Iterator[Path]:
    """The folder to load so that words are timed on
    :func:`~ultrasinger_gpu_cli.components.whisper.word_heads`: ``folder`` itself where its
    ``config.json`` already names them (ugpu's own conversions), else (faster-whisper's published
    folders carry the release's heads) a temporary folder of links to its files with that one
    setting changed in its ``config.json``, removed when the model is loaded (CTranslate2 and
    faster-whisper read every file while loading). Where links cannot be made, ``folder``."""
    from ultrasinger_gpu_cli.components.whisper import word_heads

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    wanted = [list(pair) for pair in word_heads(*decoder_shape(folder / "model.bin"))]
    if [list(pair) for pair in config.get("alignment_heads", [])] == wanted:
        yield folder
        return
    view = None
    try:
        try:
            view = Path(tempfile.mkdtemp(prefix="ugpu-whisper-"))
            for entry in folder.iterdir():
                if entry.name != "config.json":
                    (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
            (view / "config.json").write_text(json.dumps({**config, "alignment_heads": wanted}), encoding="utf-8")
        except OSError:  # no links or no temporary folder here (a Windows account without the right): as it is
            yield folder
            return
        yield view
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
