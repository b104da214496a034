"""Evaluation: the rollout engine and the task's rewards over a test set, metrics, plots.

``python -m diffrl.eval model=... task=... rollout=...`` (``__main__.py``) runs
:func:`diffrl.eval.runner.evaluate`; ``python -m diffrl.eval.plots RUN_DIR`` plots a training
run's reward and validation curves. Validation during training (``trainer.val_every``) is
:mod:`diffrl.trainer.validate`: the same engine, rewards and correctness, without this package.
"""
