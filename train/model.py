"""Building the study's model: a Keras application base plus a ``Dense(3, softmax)`` head.

The base is built with ``include_top=False, pooling="avg"`` (METHOD.md), and the model takes
*preprocessed* images (``device.preprocess`` applies the backbone's mode), exactly as the
study fed ``preprocess_input`` output to the network. Export wraps the preprocessing into
the graph; training keeps it outside so that frozen features can be cached.
"""
from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from device.backbones import Backbone
from device.dataset import LABELS


class WeightsError(RuntimeError):
    """Backbone weights that cannot be had; the message says which file and what to do."""


@dataclass(frozen=True)
class Built:
    """A built model: ``model`` (base + head) and its ``base`` (the Keras application)."""

    model: keras.Model
    base: keras.Model


_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_function(model: keras.Model):
    """``model`` in inference mode as one compiled function of any batch size.

    Keras's ``predict_on_batch`` traces a new graph for each new batch shape (the last,
    partial batch included) and each new model; this one is traced once per model and
    kept while the model lives. It takes a list of arrays (one per model input) and returns
    a list of tensors (one per output).
    """
    fn = _INFERENCE.get(model)
    if fn is None:
        spec = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype) for t in model.inputs]
        single_in, single_out = len(model.inputs) == 1, len(model.outputs) == 1
        ref = weakref.ref(model)  # a strong reference here would keep every model of a sweep alive

        @tf.function(input_signature=spec, autograph=False)
        def fn(*xs):
            out = ref()(xs[0] if single_in else list(xs), training=False)
            return [out] if single_out else list(out)

        _INFERENCE[model] = fn
    return fn


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(backbone: Backbone, weights: str) -> str | None:
    """Turn ``--weights`` (``imagenet``, ``none`` or a path) into Keras's ``weights`` argument.

    A folder is searched for ``<name>.h5``, ``<name>.weights.h5`` (what ``train.pretrain``
    writes) or Keras's own file name for the backbone.

    Raises:
        WeightsError: a path that does not exist or a folder without a file for the backbone.
    """
    if weights in ("imagenet", "none", None):
        return None if weights in ("none", None) else "imagenet"
    path = Path(weights)
    if path.is_file():
        return str(path)
    if path.is_dir():
        for name in (f"{backbone.name}.h5", f"{backbone.name}.weights.h5", backbone.weights_file):
            if (path / name).is_file():
                return str(path / name)
        raise WeightsError(f"--weights {path}: no weights file for {backbone.name} in this folder; expected "
                           f"{backbone.name}.h5 or Keras's {backbone.weights_file}")
    raise WeightsError(f"--weights {weights!r}: not 'imagenet', 'none' or an existing file or folder")


def build_base(backbone: Backbone, img_size: int, weights: str | None) -> keras.Model:
    """Build the Keras application base for ``img_size`` square RGB input.

    Args:
        backbone: registry record.
        img_size: input side in pixels (at least ``backbone.min_size``).
        weights: ``None`` (random init), ``"imagenet"`` or a weights file path.

    Raises:
        ValueError: image size below the backbone's minimum.
        WeightsError: ImageNet weights could not be downloaded (offline), naming the file.
    """
    if img_size < backbone.min_size:
        raise ValueError(f"--img-size {img_size}: {backbone.name} needs at least {backbone.min_size} px")
    constructor = getattr(keras.applications, backbone.keras_name)
    try:
        return constructor(include_top=False, weights=weights, input_shape=(img_size, img_size, 3),
                           pooling="avg")
    except Exception as exc:  # Keras raises a bare Exception for download failures
        if weights == "imagenet" and "URL fetch failure" in str(exc):
            match = re.search(r"(https?://\S+?\.h5)", str(exc))
            url = match.group(1) if match else backbone.weights_file
            name = url.rsplit("/", 1)[-1]
            raise WeightsError(
                f"--weights imagenet: Keras could not download {name} for {backbone.name} ({url}): "
                f"offline? Put the file in {keras_cache_dir()} or pass --weights PATH (a folder of "
                f"Keras weight files or one .h5 file), or --weights none for random init") from exc
        raise


def attach_head(base: keras.Model, seed: int = 0) -> keras.Model:
    """The study's model: ``base`` followed by ``Dense(3, softmax)``; float32 output."""
    head = keras.layers.Dense(len(LABELS), activation="softmax", name="head", dtype="float32",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    return keras.Model(base.input, head(base.output), name=f"{base.name}_sky")


def head_init(shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Glorot-uniform kernel and zero bias for the head, from the run's seed alone."""
    fan_in, fan_out = int(shape[0]), int(shape[1])
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    kernel = np.random.default_rng([seed, fan_in, fan_out]).uniform(-limit, limit, (fan_in, fan_out))
    return [kernel.astype(np.float32), np.zeros(fan_out, np.float32)]


def build(backbone: Backbone, img_size: int, weights: str | None, seed: int = 0) -> Built:
    """Build base and model together (see ``build_base`` and ``attach_head``).

    Random initialisation (``weights=None``) is seeded with ``seed``, so a resumed or
    repeated sweep starts from the same frozen layers.
    """
    keras.utils.set_random_seed(seed)
    base = build_base(backbone, img_size, weights)
    return Built(model=attach_head(base, seed), base=base)


def reestimate_batchnorm(base: keras.Model, images: np.ndarray, batch_size: int = 64,
                         max_images: int = 512) -> int:
    """Set every BatchNorm's moving statistics to those of ``images`` (already preprocessed).

    With random initialisation, BatchNorm layers hold mean 0 / variance 1, so a deep frozen
    stack in inference mode can shrink its output to almost nothing (MobileNetV2 gave logits
    near 1e-12). Running the base in training mode over training images, with each layer's
    momentum set so that its moving statistics become the running average of the batch
    statistics, gives frozen features that mean something. Call it before freezing.

    Returns:
        The number of BatchNorm layers updated.
    """
    layers = [l for l in base.submodules if isinstance(l, keras.layers.BatchNormalization)]
    if not layers or len(images) == 0:
        return 0
    saved = [(l, l.momentum, l.trainable) for l in layers]
    images = images[:max_images]
    try:
        for l in layers:
            l.trainable = True
        for step, start in enumerate(range(0, len(images), batch_size), start=1):
            for l in layers:
                l.momentum = (step - 1) / step
            base(images[start:start + batch_size], training=True)
    finally:
        for l, momentum, trainable in saved:
            l.momentum, l.trainable = momentum, trainable
    return len(layers)
