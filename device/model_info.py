"""What a model file says about itself: labels, input size, preprocessing, calibration.

Export writes one JSON description into every artifact (``export.embed``), so a lone
``.tflite`` or ``.onnx`` copied onto a device can be used with no manifest beside it:

- TFLite: a metadata entry named ``skyedge`` in the flatbuffer's ``metadata`` list (the
  place TFLite's own metadata uses), its buffer holding the JSON;
- ONNX: the model's ``metadata_props`` entry ``skyedge`` (what ONNX Runtime shows as custom
  metadata).

Both are read here without TensorFlow, the flatbuffers or the onnx package: the TFLite file
through ``device.flatbuffer``, the ONNX file by walking its protobuf fields. The same fields
can come from an exports manifest record (``ModelInfo.from_record``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from device.dataset import LABELS
from device.flatbuffer import root

METADATA_KEY = "skyedge"
METADATA_VERSION = 1
# the manifest record fields a description carries (the rest of a record is the export's bookkeeping)
FIELDS = ("artifact_id", "backbone", "level", "seed", "variant", "format", "labels", "img_size", "input_shape",
          "input_dtype", "input_scale", "input_zero_point", "preprocess", "temperature", "train_prior",
          "val_accuracy", "agreement", "val_n")
INPUT_CONTRACT = ("one RGB image, NHWC, raw pixel values 0..255 (decoded JPEG/PNG, any mode converted to RGB, "
                  "resized to img_size x img_size with Pillow BILINEAR, antialiased, a non-square image "
                  "stretched); the preprocessing named in 'preprocess' is inside the graph")
OUTPUT_CONTRACT = "class probabilities in the order of 'labels' (softmax inside the graph)"


class ModelInfoError(ValueError):
    """A model file whose description cannot be read; the message names the file."""


@dataclass(frozen=True)
class ModelInfo:
    """What classifying with a model needs to know.

    Attributes:
        labels: class names in output order.
        img_size: the square input side in pixels.
        preprocess: the backbone's preprocessing mode (inside the graph; for the record).
        temperature: the temperature fitted on validation images (1.0: none fitted).
        train_prior: the class mix of the training images (balanced when unknown).
        artifact_id: the artifact's id in its exports manifest ('' for an unknown file).
        source: where this came from (``manifest``, ``embedded`` or ``model input``).
    """

    labels: tuple[str, ...]
    img_size: int
    preprocess: str
    temperature: float = 1.0
    train_prior: tuple[float, ...] = ()
    artifact_id: str = ""
    source: str = "embedded"

    def __post_init__(self):
        if not self.train_prior:
            object.__setattr__(self, "train_prior", tuple(1.0 / len(self.labels) for _ in self.labels))

    @classmethod
    def from_record(cls, record: dict, source: str = "manifest") -> "ModelInfo":
        """From an exports manifest record or an embedded description.

        Raises:
            ModelInfoError: the record lacks the input size.
        """
        size = record.get("img_size") or (record.get("input_shape") or [None, None])[1]
        if not isinstance(size, int) or size < 1:
            raise ModelInfoError(f"{record.get('artifact_id', 'model')}: no input size in its description")
        labels = tuple(record.get("labels") or LABELS)
        prior = tuple(float(v) for v in record.get("train_prior") or ())
        temperature = record.get("temperature")
        return cls(labels=labels, img_size=size, preprocess=str(record.get("preprocess", "unknown")),
                   temperature=float(temperature) if isinstance(temperature, (int, float)) and temperature > 0 else 1.0,
                   train_prior=prior if len(prior) == len(labels) else (), artifact_id=str(record.get("artifact_id", "")),
                   source=source)


def description(record: dict) -> dict:
    """The JSON object export embeds: the record's model fields plus the I/O contract."""
    return {"skyedge_metadata": METADATA_VERSION, **{k: record[k] for k in FIELDS if k in record},
            "input": INPUT_CONTRACT, "output": OUTPUT_CONTRACT}


def read_embedded(path: str | os.PathLike) -> dict | None:
    """The description embedded in a ``.tflite`` or ``.onnx`` file (``None`` when it has none).

    Raises:
        ModelInfoError: unknown suffix, unreadable file, or a description that is not JSON.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelInfoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".tflite":
            content = _tflite_metadata(data).get(METADATA_KEY)
            text = None if content is None else content.decode("utf-8")
        elif suffix == ".onnx":
            text = _onnx_metadata(data).get(METADATA_KEY)
        else:
            raise ModelInfoError(f"{path}: unknown model format {suffix!r}; expected .tflite or .onnx")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        if isinstance(exc, ModelInfoError):
            raise
        raise ModelInfoError(f"{path}: not a readable {suffix[1:]} model ({exc})") from None
    if text is None:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        raise ModelInfoError(f"{path}: its '{METADATA_KEY}' metadata is not JSON") from None
    if not isinstance(info, dict):
        raise ModelInfoError(f"{path}: its '{METADATA_KEY}' metadata is not a JSON object")
    return info


def _tflite_metadata(data: bytes) -> dict[str, bytes]:
    """name -> content of every metadata entry of a TFLite flatbuffer (Model.metadata, slot 6);
    the converter's own entries (``min_runtime_version``, ``CONVERSION_METADATA``) are binary."""
    model = root(data, b"TFL3")
    buffers = model.tables(4)
    out = {}
    for entry in model.tables(6):
        name, index = entry.string(0), entry.scalar(1, "I")
        if name is None or index >= len(buffers):
            continue
        buffer = buffers[index]
        content = buffer.bytes_(0)
        if not content:  # large models keep buffer data after the flatbuffer: offset (slot 1), size (slot 2)
            offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
            content = data[offset:offset + size] if offset > 1 else b""
        if content:
            out[name] = content
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message's top-level fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf")
        yield field, wire, value


ONNX_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1, value = 2}


def _onnx_metadata(data: bytes) -> dict[str, str]:
    """key -> value of an ONNX model's ``metadata_props``."""
    out = {}
    for field, wire, value in _fields(data):
        if field == ONNX_METADATA_PROPS and wire == 2:
            entry = {f: v for f, w, v in _fields(value) if w == 2}
            out[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
    return out


def model_info(path: str | os.PathLike, record: dict | None = None, input_shape: tuple[int, ...] | None = None) -> ModelInfo:
    """The description of a model: its manifest ``record`` when given, else what the file
    embeds, else (with a warning in ``source``) what its input shape says, with the default
    labels and no calibration.

    Raises:
        ModelInfoError: no description and no usable input shape.
    """
    if record is not None:
        return ModelInfo.from_record(record, "manifest")
    embedded = read_embedded(path)
    if embedded is not None:
        return ModelInfo.from_record(embedded, "embedded")
    if input_shape and len(input_shape) == 4 and input_shape[1] == input_shape[2] and input_shape[1] > 0:
        return ModelInfo(labels=LABELS, img_size=int(input_shape[1]), preprocess="unknown", source="model input")
    raise ModelInfoError(f"{path}: the file describes nothing about itself (exported before SkyEdge embedded "
                         f"descriptions?) and its input shape {input_shape} is not a square image: "
                         f"pass the exports folder instead")
