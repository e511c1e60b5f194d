"""Inference from a training workdir: the parameters alone (EMA when the run keeps them) from its newest intact
checkpoint, without the optimizer moments and without initialising a train state, and the jitted model +
post-processing, compiled once per canvas shape. Used by `glipjax.evaluate` and `glipjax.predict`.

  predictor = Predictor("runs/quickstart")
  with predictor.context():
    detections = predictor(global_batch)   # boxes on the canvas, scores, 1-based phrase labels, valid
"""
from __future__ import annotations

import contextlib
import pathlib

import jax

from glipjax import checkpoints, config_utils, runtime
from glipjax.evaluators import common


class Predictor:

  def __init__(self, workdir: str | pathlib.Path, *, config=None, step: int | None = None,
               checkpoint: str | pathlib.Path | None = None):
    """`checkpoint`: another checkpoints folder or step to read (checkpoints.checkpoint_location)."""
    self.workdir = pathlib.Path(workdir)
    self.config = config if config is not None else config_utils.load_workdir_config(self.workdir)
    self.setup = runtime.build(self.config)
    with jax.set_mesh(self.setup.mesh):
      self.step, self.params = checkpoints.restore_params(self.setup, self.workdir, step,
                                                             checkpoint=checkpoint)
      self.rest = self.setup.init_rest()
    self._predict = common.make_predict_fn(self.setup.graphdef, self.config)

  @property
  def mesh(self):
    return self.setup.mesh

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.setup.mesh):
      yield

  def __call__(self, batch: dict) -> dict:
    """Detections of a global batch (MODEL_INPUTS of glipjax/data/batch.py, sharded over the batch axes)."""
    return self._predict(self.params, self.rest, batch)
