"""Write SkyEdge's description of an artifact into the model file itself.

The description (``device.model_info.description``: labels, input size, preprocessing,
temperature, training prior, ...) goes where each format keeps model metadata, so a model
file copied alone onto a device can be used (``skyedge classify --model one.tflite``):

- TFLite: an entry ``skyedge`` of the flatbuffer's ``metadata`` list pointing at a new
  buffer with the JSON (TensorFlow's ``flatbuffer_utils`` object API re-serialises the model;
  the graph and its weights are unchanged);
- ONNX: a ``metadata_props`` entry ``skyedge``.

An earlier ``skyedge`` entry is replaced, so embedding twice leaves one. The file is
replaced atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from device.atomic import write_bytes
from device.model_info import METADATA_KEY


def embed(path: str | os.PathLike, info: dict) -> None:
    """Embed ``info`` (a JSON object) as the model file's ``skyedge`` metadata.

    Raises:
        ValueError: a suffix other than .tflite or .onnx.
    """
    path = Path(path)
    text = json.dumps(info, sort_keys=True)
    if path.suffix == ".tflite":
        write_bytes(path, _tflite_with(path.read_bytes(), text.encode("utf-8")))
    elif path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, text
        write_bytes(path, model.SerializeToString())
    else:
        raise ValueError(f"{path}: cannot embed a description in a {path.suffix!r} file")


def _tflite_with(data: bytes, payload: bytes) -> bytes:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    entries = [m for m in (model.metadata or []) if _name(m.name) != METADATA_KEY]
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = entries + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
