"""SkyEdge's device core: image decoding, preprocessing, datasets and runtimes.

Runs on a Raspberry Pi with only numpy and Pillow (plus a TFLite/ONNX runtime for
inference). Never imports TensorFlow, directly or indirectly.
"""
