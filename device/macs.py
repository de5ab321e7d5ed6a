"""Multiply-accumulates per image, counted from an exported model file; TensorFlow-free.

One MAC is one multiply-accumulate (two floating-point operations). Only the ops that do
dense multiply-accumulate work are counted, from the tensor shapes stored in the graph:

- TFLite (read straight from the flatbuffer, no runtime needed): ``CONV_2D`` (output
  elements x kernel height x width x input channels per group), ``DEPTHWISE_CONV_2D``
  (output elements x kernel height x width), ``FULLY_CONNECTED`` (output elements x input
  features), ``BATCH_MATMUL`` (output elements x the reduced dimension), ``TRANSPOSE_CONV``
  (input elements x kernel height x width x output channels) and ``CONV_3D``;
- ONNX (needs the ``onnx`` package for its shape inference): ``Conv``, ``ConvInteger``,
  ``QLinearConv``, ``ConvTranspose``, ``Gemm``, ``MatMul``, ``MatMulInteger`` and
  ``QLinearMatMul``.

Element-wise ops, pooling, activations and softmax are not counted: their cost is memory
traffic, not multiply-accumulates. The count is the same for fp32, fp16 and int8 variants
of one model (quantization changes the arithmetic, not the number of MACs). Only the main
graph is counted (no control-flow sub-graphs); a dimension that is not fixed in the file
counts as 1 (every artifact takes one image per call).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from device.flatbuffer import Table

# TFLite BuiltinOperator codes (tensorflow/lite/schema/schema.fbs)
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL, CONV_3D = 3, 4, 9, 67, 126, 132
TFLITE_OPS = {CONV_2D: "CONV_2D", DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D", FULLY_CONNECTED: "FULLY_CONNECTED",
              TRANSPOSE_CONV: "TRANSPOSE_CONV", BATCH_MATMUL: "BATCH_MATMUL", CONV_3D: "CONV_3D"}
ONNX_OPS = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger",
            "QLinearMatMul")


class MacCountError(ValueError):
    """The file's MACs cannot be counted here; the message says why."""


def count_macs(path: str | os.PathLike) -> int:
    """Multiply-accumulates of one call (one image) of a ``.tflite`` or ``.onnx`` model.

    Raises:
        MacCountError: unknown suffix, unreadable graph, a counted op without shapes, or
            an ONNX model where the ``onnx`` package is not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return sum(tflite_op_macs(path.read_bytes()).values())
    if suffix == ".onnx":
        return sum(onnx_op_macs(path).values())
    raise MacCountError(f"{path.name}: unknown model format {suffix!r}; expected .tflite or .onnx")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= max(int(v), 1)
    return out


def _tflite_graph(data: bytes) -> tuple[list[int], list[list[int]], list[Table]]:
    """(builtin code per opcode index, shape per tensor, operators) of the main subgraph."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise MacCountError("not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = Table(data, struct.unpack_from("<I", data, 0)[0])
        # the code is the larger of the int8 deprecated field (slot 0) and the int32 one (slot 3)
        codes = [max(c.scalar(0, "b"), c.scalar(3, "i")) for c in model.tables(1)]
        subgraphs = model.tables(2)
        if not subgraphs:
            raise MacCountError("TFLite model without a subgraph")
        shapes = [t.ints(0) for t in subgraphs[0].tables(0)]
        return codes, shapes, subgraphs[0].tables(3)
    except struct.error as exc:
        raise MacCountError(f"truncated or damaged TFLite flatbuffer ({exc})") from None


def _tflite_macs_of(code: int, ins: list[list[int]], out: list[int]) -> int:
    """MACs of one counted TFLite op from its input and output shapes."""
    if code == CONV_2D:  # filter [O, kh, kw, I/groups]
        return _prod(out) * _prod(ins[1][1:])
    if code == DEPTHWISE_CONV_2D:  # filter [1, kh, kw, C x multiplier]
        return _prod(out) * _prod(ins[1][1:3])
    if code == FULLY_CONNECTED:  # weights [N, K]
        return _prod(out) * int(ins[1][-1])
    if code == BATCH_MATMUL:  # A [..., M, K] or its transpose; out [..., M, N]
        return _prod(out) * (_prod(ins[0][-2:]) // max(int(out[-2]), 1))
    if code == TRANSPOSE_CONV:  # inputs: output shape, filter [O, kh, kw, I], input
        return _prod(ins[2]) * _prod(ins[1][:3])
    if code == CONV_3D:  # filter [kd, kh, kw, I, O]
        return _prod(out) * _prod(ins[1][:4])
    return 0


def tflite_op_macs(data: bytes) -> dict[str, int]:
    """MACs per counted op type of a TFLite model's main subgraph (only types present).

    Args:
        data: the ``.tflite`` file's bytes.

    Raises:
        MacCountError: not a TFLite flatbuffer, or a counted op whose shapes are missing.
    """
    codes, shapes, operators = _tflite_graph(data)
    totals: dict[str, int] = {}
    for op in operators:
        code = codes[op.scalar(0, "I")] if op.scalar(0, "I") < len(codes) else -1
        if code not in TFLITE_OPS:
            continue
        ins = [shapes[i] if i >= 0 else [] for i in op.ints(1)]
        outs = op.ints(2)
        try:
            macs = _tflite_macs_of(code, ins, shapes[outs[0]])
        except (IndexError, ZeroDivisionError):
            raise MacCountError(f"{TFLITE_OPS[code]} without the shapes needed to count it") from None
        totals[TFLITE_OPS[code]] = totals.get(TFLITE_OPS[code], 0) + macs
    return totals


def _onnx_shapes(model) -> dict[str, list[int]]:
    """Every tensor's shape after ONNX shape inference; unknown dimensions count as 1."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception as exc:  # onnx raises its own error types
        raise MacCountError(f"ONNX shape inference failed ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    shapes = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
    return shapes


def _onnx_node_macs(node, shapes: dict[str, list[int]]) -> int:
    """MACs of one counted ONNX node (``KeyError`` when a shape is unknown)."""
    op, ins = node.op_type, list(node.input)
    out = shapes[node.output[0]]
    if op in ("Conv", "ConvInteger", "QLinearConv"):  # W [O, I/groups, kh, kw]
        return _prod(out) * _prod(shapes[ins[3 if op == "QLinearConv" else 1]][1:])
    if op == "ConvTranspose":  # W [C, O/groups, kh, kw]
        return _prod(shapes[ins[0]]) * _prod(shapes[ins[1]][1:])
    if op == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        a = shapes[ins[0]]
        return _prod(out) * int(a[0] if trans_a else a[-1])
    return _prod(out) * int(shapes[ins[0]][-1])  # MatMul, MatMulInteger, QLinearMatMul: A [..., K]


def onnx_op_macs(path: str | os.PathLike) -> dict[str, int]:
    """MACs per counted op type of an ONNX model's main graph (only types present).

    Raises:
        MacCountError: ``onnx`` not installed, the file not a model, or a counted node
            whose shapes inference cannot give.
    """
    try:
        import onnx
    except ImportError:
        raise MacCountError("counting ONNX MACs needs the onnx package (pip install onnx)") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's DecodeError for a damaged file
        raise MacCountError(f"{Path(path).name}: not a readable ONNX model ({exc})") from None
    shapes = _onnx_shapes(model)
    totals: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ONNX_OPS:
            continue
        try:
            macs = _onnx_node_macs(node, shapes)
        except (KeyError, IndexError):
            raise MacCountError(f"{node.op_type} node {node.name!r}: shapes unknown after inference") from None
        totals[node.op_type] = totals.get(node.op_type, 0) + macs
    return totals
