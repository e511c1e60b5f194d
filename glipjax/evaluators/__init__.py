"""Evaluators: the dataset-wide predict loop and protocols (`common.py`), and one module per kind of evaluated
dataset, chosen by the kind of `data.eval_source`: the embedded default's text-sensitivity protocols
(`synthetic.py`) or COCO AP on a prepared detection / grounding dataset (`prepared.py`)."""
from __future__ import annotations

import importlib
import pathlib

EVALUATORS = {"synthetic": "synthetic", "detection": "prepared", "grounding": "prepared"}


def evaluate(predict, config, tokenizer, mesh, *, workdir: str | pathlib.Path | None = None) -> dict:
  """Nested metrics of `predict(global batch) -> detections` on the evaluated split of `config.data`."""
  from glipjax.data import pipeline
  kind = pipeline.eval_dataset(config.data).kind
  if kind not in EVALUATORS:
    raise ValueError(f"dataset {config.data.eval_source!r} ({kind}) cannot be evaluated: it has no boxes")
  module = importlib.import_module(f"glipjax.evaluators.{EVALUATORS[kind]}")
  return module.evaluate(predict, config, tokenizer, mesh, workdir=workdir)
