"""The deployable graph: raw RGB pixels in, class probabilities out, one flat Keras model.

A trained run's model takes *preprocessed* images (``train.model``). For export the
backbone's preprocessing goes inside the graph, so a device feeds decoded pixels and
nothing else. Every preprocess mode of ``device.preprocess`` is an affine map per pixel,
``y = x @ M + b`` with a 3x3 matrix ``M`` (a channel swap for ``caffe``, a diagonal scale
otherwise), so it is built as a frozen 1x1 ``Conv2D``: one op that every converter, every
runtime and tfmot's quantization scheme support, with no custom layer to register.
``none`` adds nothing (the model rescales inside itself).

The result is *flat*: the trained model's layers are cloned into one functional graph after
the preprocessing layer, not nested as a sub-model, because tensorflow-model-optimization
refuses nested models.
"""
from __future__ import annotations

import numpy as np
import tf_keras as keras

from device.backbones import Backbone
from device.preprocess import CAFFE_BGR_MEAN, TORCH_MEAN, TORCH_STD

PREPROCESS_LAYER = "pixel_preprocess"
INPUT_NAME = "image"


def preprocess_affine(mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The 3x3 matrix and bias that equal ``device.preprocess.preprocess(x, mode)``.

    Args:
        mode: ``caffe``, ``tf``, ``torch`` or ``none``.

    Returns:
        ``(M, b)`` float32 with ``preprocess(x) == x @ M + b`` for RGB pixels ``x``, or
        ``None`` for ``none`` (identity).

    Raises:
        ValueError: unknown mode.
    """
    if mode == "none":
        return None
    if mode == "tf":
        return np.eye(3, dtype=np.float32) / np.float32(127.5), np.full(3, -1.0, np.float32)
    if mode == "torch":
        scale = 1.0 / (255.0 * TORCH_STD)
        return np.diag(scale).astype(np.float32), (-TORCH_MEAN / TORCH_STD).astype(np.float32)
    if mode == "caffe":
        # output channel j (BGR) takes input channel 2 - j (RGB)
        swap = np.fliplr(np.eye(3, dtype=np.float32)).copy()
        return swap, (-CAFFE_BGR_MEAN).astype(np.float32)
    raise ValueError(f"unknown preprocess mode {mode!r}; expected caffe, tf, torch or none")


def preprocess_layer(mode: str) -> keras.layers.Layer | None:
    """A frozen 1x1 ``Conv2D`` applying the preprocess ``mode`` (``None`` for ``none``)."""
    affine = preprocess_affine(mode)
    if affine is None:
        return None
    matrix, bias = affine
    layer = keras.layers.Conv2D(3, 1, use_bias=True, name=PREPROCESS_LAYER, trainable=False, dtype="float32")
    layer.build((None, None, None, 3))
    layer.set_weights([matrix.reshape(1, 1, 3, 3), bias])
    return layer


def deployable(model: keras.Model, backbone: Backbone, img_size: int, batch_size: int | None = 1) -> keras.Model:
    """One flat functional model: raw pixels (0..255, float32) -> preprocessing -> ``model``.

    Args:
        model: the trained model (takes preprocessed images; output ``head`` probabilities).
        backbone: registry record (its ``preprocess`` mode is built in).
        img_size: input side in pixels.
        batch_size: fixed batch dimension (1 for export: one image per call), or ``None``.

    Returns:
        A new model sharing ``model``'s layers (and so its weights); its layers are not
        nested, so tfmot can annotate them one by one.

    Raises:
        ValueError: ``model`` is not a single-input functional model.
    """
    if not getattr(model, "_is_graph_network", False) or len(model.inputs) != 1:
        raise ValueError(f"{model.name}: expected a single-input functional Keras model")
    inputs = keras.Input((img_size, img_size, 3), batch_size=batch_size, name=INPUT_NAME, dtype="float32")
    layer = preprocess_layer(backbone.preprocess)
    x = layer(inputs) if layer is not None else inputs
    # re-apply the trained model's layers node by node to the new tensor: calling ``model(x)``
    # would nest it as one layer (and ``clone_model(input_tensors=x)`` loops forever on a
    # non-Input tensor in tf_keras 2.21)
    outputs = model._run_internal_graph(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_deploy")


TTA_VIEWS = 8  # the dihedral group of the square: 4 quarter turns, each with and without a mirror


def dihedral_views(images):
    """The 8 rotations and flips of each image of a batch ``(N, H, W, C)`` -> ``(8N, H, W, C)``,
    view-major (the N images turned 0 quarter turns, then 1, ...; then the mirrored ones)."""
    import tensorflow as tf

    turns = [tf.image.rot90(images, k) for k in range(4)]
    return tf.concat(turns + [tf.reverse(t, axis=[2]) for t in turns], axis=0)


def with_tta(model: keras.Model, img_size: int) -> keras.Model:
    """Test-time augmentation inside the graph: one image in, the mean of ``model``'s class
    probabilities over its 8 rotations and flips out (8 forward passes of ``model`` per call).

    Args:
        model: a deployable model with a free batch dimension (``deployable(..., batch_size=None)``).
        img_size: input side in pixels.
    """
    import tensorflow as tf

    inputs = keras.Input((img_size, img_size, 3), batch_size=1, name=INPUT_NAME, dtype="float32")
    views = keras.layers.Lambda(dihedral_views, name="tta_views")(inputs)
    probs = model(views)
    outputs = keras.layers.Lambda(lambda p: tf.reduce_mean(p, axis=0, keepdims=True), name="tta_mean")(probs)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


def nested_models(model: keras.Model) -> list[str]:
    """Names of layers of ``model`` that are themselves models (tfmot cannot quantize those)."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
