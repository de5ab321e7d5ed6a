"""Data and training, on a workstation (TensorFlow through ``tf_keras``).

- Data: ``python -m train.data`` simulates (``train.synth``, checked against real cutouts by
  ``train.realism``), fetches from SkyServer (``train.fetch``, ``train.polite_http``,
  ``train.sky_objects``) and indexes datasets.
- The study's sweep: ``python -m train.sweep`` (command line), ``train.sweep_config``
  (settings and checks), ``train.sweep_plan`` (the runs), ``train.sweep_run`` (execution),
  ``train.shards`` (sharing it among processes); each run is ``train.trainer.fit`` on the
  model of ``train.model`` at a level of ``train.levels``, with frozen features cached by
  ``train.cache``; ``train.summary`` writes the tables and plots.
- Other training: ``train.pretrain`` (a backbone from scratch, in-domain) and
  ``train.distill`` (a mobile student taught by the best model).
- Shared settings without TensorFlow: ``train.recipe`` (augmentations, schedules),
  ``train.precision`` (float32 and mixed policies), ``train.console`` (quiet start-up).
- Benchmarks that print their figures: ``train.cache_benchmark``, ``train.shard_benchmark``,
  ``train.speed_benchmark``.
"""
