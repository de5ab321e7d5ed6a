"""Backbone input preprocessing in numpy, equal to Keras's ``preprocess_input``.

Modes (Keras ``imagenet_utils.preprocess_input`` names):

- ``caffe``: RGB to BGR, then subtract the ImageNet BGR means (ResNet50, VGG16).
- ``tf``: scale to [-1, 1] with ``x / 127.5 - 1`` (Xception, MobileNetV2, NASNetMobile).
- ``torch``: ``x / 255``, subtract the ImageNet RGB means, divide by the stds (DenseNet121).
- ``none``: identity; the model rescales inside itself (EfficientNet, EfficientNetV2,
  MobileNetV3).

Unlike Keras, the input is never modified in place: a new float32 array is returned.
"""
from __future__ import annotations

import numpy as np

MODES = ("caffe", "tf", "torch", "none")
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(images: np.ndarray, mode: str) -> np.ndarray:
    """Apply a backbone's preprocessing to RGB images with raw pixel values 0..255.

    Args:
        images: array (..., 3) of RGB pixels, any numeric dtype (uint8 or float).
        mode: one of ``caffe``, ``tf``, ``torch``, ``none``.

    Returns:
        A new float32 array of the same shape; ``images`` is left untouched.

    Raises:
        ValueError: unknown mode, or the last axis is not 3 channels.
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; expected one of {', '.join(MODES)}")
    x = np.array(images, dtype=np.float32, copy=True)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(f"preprocess expects RGB images with 3 channels last, got shape {x.shape}")
    if mode == "caffe":
        x = x[..., ::-1] - CAFFE_BGR_MEAN
    elif mode == "tf":
        x = x / np.float32(127.5) - np.float32(1.0)
    elif mode == "torch":
        x = (x / np.float32(255.0) - TORCH_MEAN) / TORCH_STD
    return np.ascontiguousarray(x, dtype=np.float32)
