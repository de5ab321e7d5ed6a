"""SkyEdge's device core: everything that runs on a Raspberry Pi, with no TensorFlow.

Needs only numpy and Pillow, plus a TFLite/ONNX runtime for inference (``skyedge[device]``);
never imports TensorFlow, directly or indirectly (a test imports it with TensorFlow blocked).

- Pixels: ``images`` (one decoder and one resize for every stage), ``preprocess`` (each
  backbone's ``preprocess_input`` in numpy), ``dataset`` (manifests, splits, class folders).
- Models: ``runtime`` (LiteRT, ONNX Runtime), ``model_info`` (what a model file says about
  itself), ``flatbuffer`` and ``macs`` (reading TFLite graphs), ``calibration``
  (temperature, class priors, calibration error), ``classifier`` (the ``Classifier`` API),
  ``classify`` (``skyedge classify``; ``cli`` is the ``skyedge`` command).
- Evidence: ``metrics`` (Wilson intervals, McNemar), ``baseline`` (the floors), ``backbones``
  (the registry, a table), ``compare_predictions`` (x86 against arm64).
- Files and commands: the formats every stage shares (``sweep_results``, ``predictions``,
  ``exports_manifest``), ``atomic`` (atomic writes, locks, JSON-lines records), ``csvtext`` (CSV
  read with one-line errors), ``checksum``, ``choices``, ``options`` (the numeric-option checks
  every command shares), ``progress`` (the one progress line), ``command`` (exit codes and the
  runner every command ends through).
- The Pi: ``setup_pi.sh`` (shipped in bundles), ``arm64_check.sh`` (the Pi steps under
  emulation), ``sdss-sample/`` (600 real SDSS cutouts, the demo's data).
"""
