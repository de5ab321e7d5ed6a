"""On-device benchmark of exported sky-image classifiers (TensorFlow-free).

``bench run`` measures every exported model x runtime x threads x mode in its own worker
subprocess (``bench.worker``) and appends one flat JSON line per job; ``bench overhead``
checks that the worker's timed loop adds no measurable cost over a bare ``invoke()`` loop;
``bench bundle`` packs models, reference predictions and a labelled validation subset for a
Raspberry Pi; ``bench android`` drives TFLite's ``benchmark_model`` on a phone over adb.
"""
