"""The backbone registry: one frozen record per supported Keras application.

Importable without TensorFlow, so the device and the benchmark can look up a backbone's
preprocessing and input size. Everything else (training, levels, export) looks backbones
up here, by their lower-case command-line name.
"""
from __future__ import annotations

from dataclasses import dataclass


def _steps(stop: int, step: int) -> tuple[int, ...]:
    return tuple(range(0, stop + 1, step))


@dataclass(frozen=True)
class Backbone:
    """One Keras application backbone.

    Attributes:
        name: command-line name (``mobilenetv2``).
        keras_name: constructor in ``tf_keras.applications`` (``MobileNetV2``).
        keras_module: module whose ``preprocess_input`` Keras documents for it.
        preprocess: numpy preprocess mode (``caffe``, ``tf``, ``torch``, ``none``).
        default_size: ImageNet input size of the published weights, pixels. Used only by
            ``python -m train.levels`` when no ``--img-size`` is given; the sweep trains every
            backbone at one common ``--img-size``, as the study compared them.
        min_size: smallest input Keras accepts with ``include_top=False``.
        feature_dim: width of the pooled feature vector.
        paper_levels: the study's level schedule (ours for backbones it did not use).
        block_pattern: regex whose first group names the block/stage of a layer.
        mobile: designed for mobile/edge devices.
        in_paper: one of the study's seven backbones.
        weights_file: file name of Keras's ImageNet no-top weights (what ``--weights
            imagenet`` downloads into ``~/.keras/models``).
    """

    name: str
    keras_name: str
    keras_module: str
    preprocess: str
    default_size: int
    min_size: int
    feature_dim: int
    paper_levels: tuple[int, ...]
    block_pattern: str
    mobile: bool
    in_paper: bool
    weights_file: str


BACKBONES: tuple[Backbone, ...] = (
    Backbone("resnet50", "ResNet50", "resnet", "caffe", 224, 32, 2048, _steps(45, 5),
             r"^(conv\d_block\d+)_", False, True,
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg16", "VGG16", "vgg16", "caffe", 224, 32, 512, _steps(13, 1),
             r"^(block\d)_", False, True,
             "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("densenet121", "DenseNet121", "densenet", "torch", 224, 32, 1024, _steps(45, 5),
             r"^(conv\d_block\d+|pool\d)_", False, True,
             "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("xception", "Xception", "xception", "tf", 299, 71, 2048, _steps(26, 2),
             r"^(block\d+)_", False, True,
             "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("efficientnetb2", "EfficientNetB2", "efficientnet", "none", 260, 32, 1408, _steps(39, 3),
             r"^(block\d+[a-z])_", False, True,
             "efficientnetb2_notop.h5"),
    Backbone("mobilenetv2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32, 1280,
             (0, 1, 3, 5, 7, 10, 15, 20, 25, 30), r"^(block_\d+|expanded_conv)_", True, True,
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    Backbone("nasnetmobile", "NASNetMobile", "nasnet", "tf", 224, 32, 1056, _steps(90, 10),
             r"(?:normal|reduction|adjust).*?_((?:reduce_)?\d+)$", True, True,
             "NASNet-mobile-no-top.h5"),
    Backbone("mobilenetv3small", "MobileNetV3Small", "mobilenet_v3", "none", 224, 32, 576, _steps(45, 5),
             r"^(expanded_conv(?:_\d+)?)/", True, False,
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    Backbone("mobilenetv3large", "MobileNetV3Large", "mobilenet_v3", "none", 224, 32, 960, _steps(45, 5),
             r"^(expanded_conv(?:_\d+)?)/", True, False,
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    Backbone("efficientnetb0", "EfficientNetB0", "efficientnet", "none", 224, 32, 1280, _steps(39, 3),
             r"^(block\d+[a-z])_", True, False,
             "efficientnetb0_notop.h5"),
    Backbone("efficientnetv2b0", "EfficientNetV2B0", "efficientnet_v2", "none", 224, 32, 1280, _steps(39, 3),
             r"^(block\d+[a-z])_", True, False,
             "efficientnetv2-b0_notop.h5"),
)

_BY_NAME = {b.name: b for b in BACKBONES}
GROUPS: dict[str, tuple[str, ...]] = {
    "paper": tuple(b.name for b in BACKBONES if b.in_paper),
    "mobile": tuple(b.name for b in BACKBONES if b.mobile),
    "all": tuple(b.name for b in BACKBONES),
}


def get(name: str) -> Backbone:
    """The backbone called ``name`` (case-insensitive; ``MobileNetV2`` works too).

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    key = name.strip().lower().replace("_", "").replace("-", "")
    if key not in _BY_NAME:
        raise KeyError(f"unknown backbone {name!r}; expected one of {', '.join(_BY_NAME)} "
                       f"or a group ({', '.join(GROUPS)})")
    return _BY_NAME[key]


def resolve(spec: str | list[str]) -> list[Backbone]:
    """Backbones named by a comma-separated list of names and groups, in order, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Backbone] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        for name in GROUPS.get(item.lower(), (item,)):
            backbone = get(name)
            if backbone not in out:
                out.append(backbone)
    if not out:
        raise KeyError(f"no backbone named in {spec!r}; expected names or groups ({', '.join(GROUPS)})")
    return out
