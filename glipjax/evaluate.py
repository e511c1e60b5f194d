"""Evaluate the newest checkpoint of a training run on the validation split of its `data.eval_source`
(glipjax/evaluators: the embedded default's detection over the 15 kinds with its text-blind control and caption
grounding with its text sensitivity; COCO AP on a prepared detection or grounding dataset).

  python -m glipjax.evaluate --workdir runs/quickstart

Prints the metrics as JSON; writes predictions.json and pictures/ into the workdir.
"""
from __future__ import annotations

import json
import pathlib

import jax
from absl import app, flags

import glipjax  # noqa: F401
from glipjax import evaluators
from glipjax.evaluators import common


def evaluate(config, graphdef, params, rest, tokenizer, *, mesh, workdir=None) -> dict:
  """Nested metrics of `params` on the config's evaluated split (glipjax/evaluators)."""
  fn = common.make_predict_fn(graphdef, config)
  return evaluators.evaluate(lambda batch: fn(params, rest, batch), config, tokenizer, mesh, workdir=workdir)


def main(argv):
  del argv
  from glipjax import distributed, runtime
  from glipjax.predictor import Predictor
  distributed.initialize_from_flags()  # before any device use
  workdir = pathlib.Path(flags.FLAGS.workdir)
  predictor = Predictor(workdir)
  tokenizer = runtime.prepare_tokenizer(predictor.config, workdir)
  with predictor.context():
    metrics = evaluators.evaluate(predictor, predictor.config, tokenizer, predictor.mesh, workdir=workdir)
  print(json.dumps(dict(metrics, step=int(predictor.step)), indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "a training workdir (config.json + checkpoints)")
  flags.mark_flag_as_required("workdir")
  from glipjax import distributed
  distributed.define_flags()
  app.run(main)
