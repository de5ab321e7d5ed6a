import importlib

import numpy as np
import pytest

from device.backbones import BACKBONES
from device.preprocess import MODES, preprocess


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda b: b.name)
def test_equals_keras_preprocess_input(backbone):
    keras_apps = pytest.importorskip("tf_keras.applications")
    module = getattr(keras_apps, backbone.keras_module)
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3)).astype(np.uint8)
    ours = preprocess(images, backbone.preprocess)
    theirs = module.preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_never_in_place(mode):
    for dtype in (np.uint8, np.float32, np.float64):
        x = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3)).astype(dtype)
        before = x.copy()
        out = preprocess(x, mode)
        np.testing.assert_array_equal(x, before)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert not np.shares_memory(out, x)


def test_bad_mode_and_shape():
    with pytest.raises(ValueError, match="unknown preprocess mode 'bgr'.*caffe"):
        preprocess(np.zeros((1, 2, 2, 3)), "bgr")
    with pytest.raises(ValueError, match="3 channels"):
        preprocess(np.zeros((1, 2, 2, 4)), "tf")


def test_registry_modules_exist_without_tensorflow():
    # keras_module names must be real tf_keras.applications modules (checked when installed)
    apps = pytest.importorskip("tf_keras.applications")
    for b in BACKBONES:
        assert hasattr(apps, b.keras_module), b
        assert hasattr(apps, b.keras_name), b
        importlib.import_module(f"tf_keras.applications.{b.keras_module}")
