"""Training modes (`train.mode`): which parameters a run trains, for pretraining and for transfer.

One file per mode, each a `configure(config)` that sets the optimizer's parameter patterns (glipjax/optim.py) and
whatever the mode adds to the model. The mode chooses what trains; the recipe (learning rate, weight decay, steps)
stays the config's (configs/transfer.py holds the official ones).

  full             every parameter (pretraining, fine-tuning)
  prompt_tuning    only `tunable_linear` (GLIP's: a zero-initialised table added to the prompt's token features)
  linear_probe     only the grounding head's predictors (the DyHead tower, encoders and fusion frozen)
  frozen_language  everything but the language backbone
"""
from __future__ import annotations

import importlib

from glipjax.config_utils import ConfigError

NAMES = ("full", "prompt_tuning", "linear_probe", "frozen_language")


def resolve(config):
  """A copy of `config` with its `train.mode` applied (idempotent: resolving a resolved config changes nothing)."""
  mode = config.train.mode
  if mode not in NAMES:
    raise ConfigError(f"train.mode {mode!r}: use one of {', '.join(NAMES)}")
  config = config.copy_and_resolve_references()
  importlib.import_module(f"glipjax.modes.{mode}").configure(config)
  return config
