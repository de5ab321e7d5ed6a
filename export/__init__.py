"""Export trained runs as deployable artifacts: TFLite and ONNX, quantized and not, verified.

``python -m export.tflite`` and ``python -m export.onnx`` read a ``train.sweep`` folder,
rebuild each selected run's best checkpoint with its preprocessing inside the graph
(``export.graph``), convert it, run the artifact on the validation split with the device's
own runtime code (``export.verify``) and record it in ``EXPORTS/manifest.json``
(``export.manifest``). Quantization inputs and QAT live in ``export.quantize``.
"""
