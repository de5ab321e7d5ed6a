"""Frozen-feature caching: run the frozen part of a model once, train only the top.

Without augmentation the frozen layers compute the same output every epoch. So the frozen
part runs once per image in inference mode, the tensors that cross the frozen/trainable
boundary are kept (several where skip connections cross it: DenseNet, ResNet, NASNet,
EfficientNet), and the trainable top is a Keras model whose inputs are those tensors,
sharing its layers (and weights) with the full model.

Levels of one backbone share the work: the deepest level's boundary is computed from the
images, each shallower level's boundary from the previous cache. Arrays stay in memory up
to a byte budget and are memory-mapped files beyond it.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras


def boundary_tensors(model: keras.Model, base: keras.Model, level: int) -> list:
    """Symbolic tensors crossing from the frozen part into the trainable part at ``level``.

    Level 0 (head only): the pooled features. Level ``len(base.layers)``: the input itself.
    Otherwise every output of a frozen layer that a trainable layer consumes, ordered by
    producing layer.
    """
    layers = base.layers
    n = len(layers)
    first = n - level
    if level == 0:
        return [base.output]
    if first == 0:
        return [base.input]
    index = {id(layer): i for i, layer in enumerate(layers)}
    found: list = []
    for layer in layers[first:]:
        # node 0 is the call that built the base; later nodes come from ``replay``
        for tensor in layer._inbound_nodes[0].keras_inputs:
            producer = tensor._keras_history.layer
            if index.get(id(producer), n) < first and not any(tensor is t for t in found):
                found.append(tensor)
    found.sort(key=lambda t: index[id(t._keras_history.layer)])
    return found


def replay(model: keras.Model, inputs: list, outputs: list, name: str | None = None) -> keras.Model:
    """A model from some of ``model``'s symbolic tensors to others, sharing its layers.

    Keras can build a model from intermediate tensors, but doing so rewires their history
    and breaks the next such model; so each layer's original call is replayed on fresh
    ``Input`` tensors instead (same layer objects, so the same weights).
    """
    fresh = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in inputs]
    mapping = {id(t): f for t, f in zip(inputs, fresh)}

    def mapped(value):
        return mapping[id(value)] if id(value) in mapping else value

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or all(id(t) in mapping for t in outputs):
            continue
        node = layer._inbound_nodes[0]
        if not node.keras_inputs or not all(id(t) in mapping for t in node.keras_inputs):
            continue
        args = tf.nest.map_structure(mapped, node.call_args)
        kwargs = tf.nest.map_structure(mapped, node.call_kwargs)
        result = layer(*args, **kwargs)
        for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(result)):
            mapping[id(old)] = new
    missing = [t.name for t in outputs if id(t) not in mapping]
    if missing:
        raise ValueError(f"cannot reach {missing} from the given tensors of {model.name}")
    return keras.Model(fresh, [mapping[id(t)] for t in outputs], name=name)


def top_model(model: keras.Model, boundary: list) -> keras.Model:
    """The trainable top: boundary tensors in, class probabilities out (layers shared)."""
    if len(boundary) == 1 and boundary[0] is model.input:
        return model
    return replay(model, boundary, [model.output], name=f"{model.name}_top")


def reserve(path: Path) -> None:
    """Give a (sparse) memory-mapped file all its disk blocks now, so a full disk is an
    ``OSError`` naming the file here, not a SIGBUS when a page is first written.

    Raises:
        OSError: the disk cannot hold the file; the message names it, its size and the reason.
    """
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        elif shutil.disk_usage(path.parent).free < size:  # no fallocate (macOS): check the free space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot reserve {size:,} bytes for the memory-mapped feature cache "
                                 f"({exc.strerror}); free space or point --cache-dir elsewhere", str(path)) from None
    finally:
        os.close(fd)


@dataclass
class FeatureStore:
    """Places cache arrays in memory up to ``budget_bytes``, memory-mapped files beyond.

    Args:
        budget_bytes: total bytes allowed in memory at once (released arrays give it back).
        spill_dir: folder for memory-mapped files (created on demand, removed by ``close``).
    """

    budget_bytes: int
    spill_dir: Path
    in_memory: int = 0
    spilled_bytes: int = 0
    _sizes: dict = field(default_factory=dict)

    def allocate(self, shape: tuple, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.in_memory + nbytes <= self.budget_bytes:
            array = np.empty(shape, dtype=dtype)
            self.in_memory += nbytes
        else:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            path = self.spill_dir / f"{uuid.uuid4().hex}.f{np.dtype(dtype).itemsize * 8}"
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            try:
                reserve(path)
            except OSError:
                del array
                path.unlink(missing_ok=True)
                raise
            self.spilled_bytes += nbytes
        self._sizes[id(array)] = (nbytes, isinstance(array, np.memmap))
        return array

    def release(self, arrays: list[np.ndarray]) -> None:
        for array in arrays:
            nbytes, mapped = self._sizes.pop(id(array), (0, False))
            if mapped:
                path = Path(array.filename)
                del array
                path.unlink(missing_ok=True)
            else:
                self.in_memory -= nbytes

    def close(self) -> None:
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def run_frozen(front: keras.Model, inputs: list[np.ndarray], store: FeatureStore,
               batch_size: int = 64) -> list[np.ndarray]:
    """Run ``front`` in inference mode over ``inputs`` in batches into store-allocated arrays."""
    from train.model import inference_function

    infer = inference_function(front)
    n = len(inputs[0])
    outputs: list[np.ndarray] | None = None
    for start in range(0, n, batch_size):
        result = [r.numpy() for r in infer(*(a[start:start + batch_size] for a in inputs))]
        if outputs is None:
            outputs = [store.allocate((n,) + r.shape[1:], r.dtype) for r in result]
        for out, r in zip(outputs, result):
            out[start:start + len(r)] = r
    if outputs is None:
        raise ValueError("no images to compute features for")
    return outputs


class LevelCache:
    """Cached boundary tensors of one split, moved level by level from deep to shallow.

    Call ``advance`` with levels in decreasing order (largest ``level``, i.e. earliest
    boundary, first) while the frozen layers hold their initial weights.
    """

    def __init__(self, model: keras.Model, base: keras.Model, images: np.ndarray,
                 store: FeatureStore, batch_size: int = 64):
        self.model, self.base, self.store, self.batch_size = model, base, store, batch_size
        self.images = images
        self.boundary: list = [base.input]
        self.arrays: list[np.ndarray] = [images]
        self.passes_from_images = 0  # frozen passes that started from the images themselves

    def advance(self, level: int) -> list[np.ndarray]:
        """Boundary arrays for ``level``, computed from the current cache."""
        target = boundary_tensors(self.model, self.base, level)
        if len(target) == len(self.boundary) and all(a is b for a, b in zip(target, self.boundary)):
            return self.arrays
        front = replay(self.model, self.boundary, target)
        if self.arrays[0] is self.images:
            self.passes_from_images += 1
        arrays = run_frozen(front, self.arrays, self.store, self.batch_size)
        if self.arrays[0] is not self.images:
            self.store.release(self.arrays)
        self.boundary, self.arrays = target, arrays
        return arrays
