"""Defaults shared by every launchable config: model, data, optimisation, checkpointing, evaluation.

Launchable configs (`glip_t.py`, `glip_l.py`, `tiny.py`) call `get_config(model=...)` and override.
Every key that exists is documented here; `--config.foo=bar` on an unknown key is an error.
"""
import ml_collections

from configs import model as model_lib


def get_config(model: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model if model is not None else model_lib.glip_model("glip_t_c")

  # Data: a TFDS dataset name (+ builder kwargs) read through tfds.data_source and grain.
  c.data = ml_collections.ConfigDict()

  # Optimisation (official recipe, DESIGN.md §1).
  c.optim = ml_collections.ConfigDict()

  c.train = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict()
  c.checkpoint = ml_collections.ConfigDict()
  c.mesh = ml_collections.ConfigDict()
  return c
