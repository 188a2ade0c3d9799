"""The published checksums of the model files ugpu fetches: the project's own list.

Copied from the libraries' release tables (openai-whisper 20250625's download table, demucs 4.1.0's
``files.txt``), so ``ugpu models verify`` checks a file in a models folder (``DIR/whisper/small.pt``,
``DIR/demucs/04573f0d.th``) against the real release even where its name carries no digest.
"""

from __future__ import annotations

#: Other names of Whisper checkpoints (openai-whisper's ``turbo`` is ``large-v3-turbo``).
WHISPER_ALIASES = {"turbo": "large-v3-turbo"}

#: Whisper checkpoints: model name -> SHA-256.
WHISPER_SHA256 = {
    "tiny.en": "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03",
    "tiny": "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
    "base.en": "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead",
    "base": "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
    "small.en": "f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872",
    "small": "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794",
    "medium.en": "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f",
    "medium": "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1",
    "large-v1": "e4b87e7e0bf463eb8e6956e646f1e277e901512310def2c24bf0e11bd3c28e9a",
    "large-v2": "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524",
    "large-v3": "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb",
    "large": "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb",
    "large-v3-turbo": "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a",
    "turbo": "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a",
}

#: Demucs models: signature -> the first 8 hex digits of the SHA-256 (all demucs publishes).
DEMUCS_SHA256_PREFIX = {
    "0d19c1c6": "0f06f20e",
    "5d2d6c55": "db83574e",
    "7d865c68": "3d5dd56b",
    "7ecf8ec1": "70f50cc9",
    "a1d90b5c": "ae9d2452",
    "c511e2ab": "fe698775",
    "cfa93e08": "61801ae1",
    "e51eebcc": "c1b80bdd",
    "6b9c2ca1": "3fd82607",
    "b72baf4e": "8778635e",
    "42e558d4": "196e0e1b",
    "305bc58f": "18378783",
    "14fc6a69": "a89dd0ee",
    "464b36d7": "e5a9386e",
    "7fd6ef75": "a905dd85",
    "83fc094f": "4a16d450",
    "1ef250f1": "592467ce",
    "902315c2": "b39ce9c9",
    "9a6b4851": "03af0aa6",
    "fa0cb7f9": "100d8bf4",
    "955717e8": "8726e21a",
    "f7e0c4bc": "ba3fe64a",
    "d12395a8": "e57c48e6",
    "92cfc3b6": "ef3bcb9c",
    "04573f0d": "f3cf25b2",
    "75fc33f5": "1941ce65",
    "5c90dfd2": "34c22ccb",
}
