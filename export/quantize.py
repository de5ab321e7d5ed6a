"""Quantization inputs and quantization-aware training for the exporters.

- Calibration images come from the *training* split only (never validation, which is what
  verification measures), a fixed random subset per seed, raw pixels 0..255 as the
  deployed graph takes them.
- The representative dataset pins the input range to exactly 0..255: the first
  calibration image carries one pixel at 0 and one at 255, so the converter chooses input
  scale 1 and zero point -128 (int8) and a device's pixel p is fed as ``p - 128`` with no
  rounding at all. One pixel of one image does not move any other tensor's range
  measurably (bright, saturated star cores are common in SDSS cutouts anyway).
- QAT (tensorflow-model-optimization, Keras 2 only) starts from the deployable flat graph
  (``export.graph.deployable``). Layers tfmot's default 8-bit scheme supports are
  annotated normally; any other layer (``Rescaling``, ``Normalization``, the ``TFOpLambda``
  ops of MobileNetV3's hard-swish...) is annotated with a pass-through config that keeps
  it in float during training. Whatever stays float is calibrated by the converter from
  the representative dataset, so the result is still a full-integer model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from device.dataset import Dataset, class_weights


class CalibrationError(ValueError):
    """A calibration set that cannot be used (empty, too small); the message says why."""


@dataclass(frozen=True)
class Calibration:
    """Raw training images for calibration (uint8, (N, H, W, 3)) and their record paths."""

    images: np.ndarray
    paths: list[str]
    labels: np.ndarray


def check_calibration_size(requested: int, available: int) -> None:
    """Refuse an empty or oversized calibration request before any conversion.

    Raises:
        CalibrationError: ``requested < 1`` or more images than the training split has.
    """
    if requested < 1:
        raise CalibrationError(f"--calib {requested}: expected at least 1 training image")
    if available < 1:
        raise CalibrationError("the training split is empty; calibration needs training images")
    if requested > available:
        raise CalibrationError(f"--calib {requested}: the training split has only {available} images; "
                               f"use --calib {available} or fewer")


def calibration_set(dataset: Dataset, img_size: int, count: int, seed: int = 0) -> Calibration:
    """``count`` training images, picked at random (fixed ``seed``), decoded at ``img_size``.

    Raises:
        CalibrationError: see ``check_calibration_size``; or no image decodes.
    """
    train = dataset.split("train")
    check_calibration_size(count, len(train))
    order = np.random.default_rng(seed).permutation(len(train))[:count]
    chosen = {train[i].path for i in order}
    subset = Dataset(root=dataset.root, records=[r for r in train if r.path in chosen])
    chosen_arrays = subset.load_arrays("train", img_size)
    if len(chosen_arrays.images) == 0:
        raise CalibrationError("none of the chosen calibration images could be decoded")
    return Calibration(images=chosen_arrays.images, paths=[r.path for r in chosen_arrays.records],
                       labels=chosen_arrays.labels)


def pinned(images: np.ndarray) -> np.ndarray:
    """Float32 copy of ``images`` whose first image has one pixel 0 and one pixel 255."""
    x = np.array(images, dtype=np.float32, copy=True)
    x[0, 0, 0, :] = 0.0
    x[0, 0, -1, :] = 255.0
    return x


def representative_dataset(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The TFLite converter's representative dataset: one (1, H, W, 3) float32 image a step."""
    x = pinned(images)

    def generator():
        for image in x:
            yield [image[None]]

    return generator


def _passthrough_config():
    """A tfmot QuantizeConfig that quantizes nothing (the layer stays float in QAT)."""
    import tensorflow_model_optimization as tfmot

    class PassThroughQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Keeps a layer tfmot cannot quantize in float; the converter calibrates it later."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return PassThroughQuantizeConfig


def conv_batchnorms(model) -> set[str]:
    """Names of BatchNormalization layers whose only input is a linear Conv2D/DepthwiseConv2D.

    Read from ``model``'s own functional config: the layers of a deployable model also
    belong to the trained model they were re-applied from, so a layer's inbound nodes
    are not all ``model``'s.
    """
    layers = model.get_config()["layers"]
    by_name = {layer["name"]: layer for layer in layers}
    names = set()
    for layer in layers:
        nodes = layer.get("inbound_nodes") or []
        if layer["class_name"] != "BatchNormalization" or len(nodes) != 1 or len(nodes[0]) != 1:
            continue
        source = by_name.get(nodes[0][0][0])
        if (source and source["class_name"] in ("Conv2D", "DepthwiseConv2D")
                and source["config"].get("activation") == "linear"):
            names.add(layer["name"])
    return names


@dataclass
class QatResult:
    """A QAT model ready for conversion and notes on what stayed in float."""

    model: object
    float_layers: list[str]
    epochs: int
    train_accuracy: float


def qat_model(model, log: Callable[[str], None] = print):
    """Annotate a flat deployable model for QAT and apply tfmot's default 8-bit scheme.

    Args:
        model: flat functional tf_keras model (``export.graph.deployable``).
        log: where notes go.

    Returns:
        ``(quantization-aware model, names of layers kept in float)``.

    Raises:
        ValueError: the model nests a sub-model (tfmot cannot see inside it).
        Exception: whatever tfmot raises for a graph it cannot transform (the caller
            records it for this variant).
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_module)

    nested = [l.name for l in model.layers if isinstance(l, keras.Model)]
    if nested:
        raise ValueError(f"tfmot cannot quantize nested models ({', '.join(nested)}); flatten first")
    registry = registry_module.Default8BitQuantizeRegistry()
    config_class = _passthrough_config()
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    kept_float: list[str] = []
    folded = conv_batchnorms(model)

    def clone(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer):
            return fresh
        if isinstance(layer, keras.layers.AveragePooling2D):
            # TFLite's AVERAGE_POOL_2D needs the same input and output scale; tfmot's
            # registry gives it its own output quantizer, which the converter then refuses
            # ("quantization parameters violate the same scale constraint", DenseNet's
            # transition blocks). Without one, the output inherits the input's scale.
            kept_float.append(layer.name)
            return annotate(fresh, quantize_config=config_class())
        # a BatchNorm right after a convolution is not in the registry: tfmot's own
        # transforms fold it into the convolution's fake quantization, but only when the
        # BatchNorm carries no custom QuantizeConfig; a pass-through config there puts a
        # fake quantizer between Conv and BatchNorm, which the converted graph (BatchNorm
        # folded into the Conv) does not have
        if registry.supports(layer) or layer.name in folded:
            return annotate(fresh)
        kept_float.append(layer.name)
        return annotate(fresh, quantize_config=config_class())

    annotated = keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    with tfmot.quantization.keras.quantize_scope({"PassThroughQuantizeConfig": config_class}):
        quantized = tfmot.quantization.keras.quantize_apply(annotated)
    if kept_float:
        kinds = sorted({type(model.get_layer(n)).__name__ for n in kept_float})
        log(f"  qat: {len(kept_float)} layer(s) annotated pass-through, no fake quantizer of their own ({', '.join(kinds)})")
    return quantized, kept_float


def train_qat(model, images: np.ndarray, labels: np.ndarray, epochs: int = 2, lr: float = 1e-5,
              batch_size: int = 32, seed: int = 0, log: Callable[[str], None] = print) -> QatResult:
    """Quantization-aware fine-tuning of a deployable model on raw training images.

    BatchNormalization layers stay in inference mode (their statistics are the trained
    model's); every other weight is fine-tuned with a small learning rate and the
    study's class weights.

    Args:
        model: flat deployable model (raw pixels in), starting from the best checkpoint.
        images: raw training images uint8 (N, H, W, 3).
        labels: class indices.
        epochs, lr, batch_size, seed: training settings.
        log: where notes go.

    Returns:
        The trained quantization-aware model and notes.
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    quantized, kept_float = qat_model(model, log)
    for layer in quantized.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization) or inner.name == "pixel_preprocess":
            layer.trainable = False
    n_classes = quantized.output_shape[-1]
    weights = class_weights(labels)
    sample_weight = np.array([weights.get(int(c), 0.0) for c in labels], np.float32)
    quantized.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="categorical_crossentropy",
                      metrics=["accuracy"])
    started = time.perf_counter()

    def epoch_line(epoch: int, logs: dict) -> None:  # a line per epoch: QAT takes minutes on a CPU
        log(f"  QAT epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.3f}, "
            f"train acc {100 * logs.get('accuracy', float('nan')):.1f}%, {time.perf_counter() - started:.0f}s")

    history = quantized.fit(images.astype(np.float32), np.eye(n_classes, dtype=np.float32)[labels],
                            sample_weight=sample_weight, epochs=epochs, batch_size=batch_size, verbose=0,
                            shuffle=True, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=epoch_line)])
    pin_input_range(quantized)
    return QatResult(model=quantized, float_layers=kept_float, epochs=epochs,
                     train_accuracy=float(history.history["accuracy"][-1]))


def pin_input_range(quantized, low: float = 0.0, high: float = 255.0) -> int:
    """Set the range of tfmot's input ``QuantizeLayer`` to exactly ``low..high``.

    In a QAT model the converter does not calibrate the input: its int8 scale and zero
    point come from the input ``QuantizeLayer``'s moving min/max, learnt from whatever
    pixel range the training batches happened to span (0..220 on dim images), so a device's
    pixel would no longer map 1:1. Pinning the range to 0..255 gives scale 1 and zero
    point -128, as for the post-training int8 variant.

    Returns:
        The number of variables set (2 for a model with one image input).
    """
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

    count = 0
    input_names = {t.name for t in quantized.inputs}
    for layer in quantized.layers:
        if not isinstance(layer, QuantizeLayer):
            continue
        if not any(t.name in input_names for t in _inputs_of(layer)):
            continue
        for var in layer.weights:
            name = var.name.split(":")[0]
            if name.endswith("_min"):
                var.assign(low)
                count += 1
            elif name.endswith("_max"):
                var.assign(high)
                count += 1
    return count


def _inputs_of(layer) -> list:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
