"""The three engines behind one interface (:class:`~.base.Engine`).

Heavy libraries (torch, whisper, demucs, torchcrepe) are imported inside the engines'
methods, never at import time of this package.
"""

from ultrasinger_gpu_cli.engines.base import Engine, EngineRun, Progress

__all__ = ["Engine", "EngineRun", "Progress", "create"]


def create(component: str, settings: dict, models_dir=None) -> Engine:
    """An engine for ``component`` with the plan's settings for it."""
    if component == "demucs":
        from ultrasinger_gpu_cli.engines.demucs_engine import DemucsEngine

        return DemucsEngine(settings, models_dir)
    if component == "whisper":
        from ultrasinger_gpu_cli.engines.whisper_engine import WhisperEngine

        return WhisperEngine(settings, models_dir)
    if component == "crepe":
        from ultrasinger_gpu_cli.engines.crepe_engine import CrepeEngine

        return CrepeEngine(settings, models_dir)
    raise KeyError(component)
