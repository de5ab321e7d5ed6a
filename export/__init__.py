"""Export trained runs as deployable artifacts: TFLite and ONNX, quantized and not, verified.

``python -m export.tflite`` and ``python -m export.onnx`` read a ``train.sweep`` folder and
share one command line (``export.cli``, settings in ``export.config``) and one pipeline
(``export.pipeline``): select the runs (``--select``, ``export.select``), rebuild each run's
best checkpoint with its preprocessing inside the graph (``export.graph``), convert it
(``export.tflite``, ``export.onnx``; int8 calibration and QAT in ``export.quantize``, the
per-layer int8 error table in ``export.int8_layers``, int8 ranges and float ops chosen in
``export.int8_ranges``), run the artifact on the validation split with the device's own
runtime code (``export.verify``), rebuild an int8 artifact that disagrees with its Keras
model (``export.int8_rescue``), fit
its temperature there, write SkyEdge's description into the model file (``export.embed``) and
record it in ``EXPORTS/manifest.json`` (its format is owned by ``device.exports_manifest``).
``python -m export.onnx_int8_benchmark`` compares the ONNX int8 forms; ``python -m
export.rescue_table`` tables two exports of the same runs, without and with the rescue.
"""
