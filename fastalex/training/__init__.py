"""The training application: what ``python -m fastalex.train`` and ``fastalex.evaluate`` run.

Built on the library (fastalex.models, fastalex.layers), which never imports it. From code:
``options.resolve(argv, **overrides)`` makes a run's configuration, ``train.run(config)`` trains
it, ``evaluate.evaluate_checkpoint(path)`` scores a checkpoint. Design: docs/training.md.
"""
