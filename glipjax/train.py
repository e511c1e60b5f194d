"""Train GLIP from a config file.

  python -m glipjax.train --config configs/tiny.py --workdir runs/tiny [--config.train.num_steps=200]

Restarting with the same workdir resumes from the newest intact checkpoint (train state and data iterator).
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

import glipjax  # noqa: F401
from glipjax import distributed, trainer
from glipjax.config_utils import ConfigError


def main(argv):
  del argv
  distributed.initialize_from_flags()  # before any device use
  try:
    final = trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (FileNotFoundError, ConfigError) as e:  # an unprepared dataset, a missing file, a config that cannot run
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({k: v for k, v in final.items() if not isinstance(v, dict)}, indent=2))


def run():
  """The command (`python -m glipjax.train`, or `glipjax-train` once the package is installed)."""
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py", lock_config=True)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and pictures go")
  flags.mark_flags_as_required(["config", "workdir"])
  distributed.define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
