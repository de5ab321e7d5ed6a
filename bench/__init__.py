"""On-device benchmark and report of exported sky-image classifiers (TensorFlow-free).

``bench run`` measures every exported model x runtime x threads x mode in its own worker
subprocess (``bench.worker``, jobs planned by ``bench.jobs``, timing in ``bench.latency``,
memory in ``bench.memory``, the machine in ``bench.fingerprint``, peaks in ``bench.peak``) and
appends one flat JSON line per job; ``bench overhead`` checks the timed loop's own cost;
``bench bundle`` packs models, reference predictions, labelled images and the SkyEdge wheel
for a Raspberry Pi; ``bench floors`` scores the majority class and the feature baseline;
``bench android`` drives TFLite's ``benchmark_model`` on a phone over adb; ``bench report``
(``bench.report`` with ``bench.verdict``, ``bench.plots`` and ``bench.calibration``) answers
the study's claim. ``python -m bench.classify_benchmark`` measures ``skyedge classify``.
"""
