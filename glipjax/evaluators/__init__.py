"""Evaluators: the dataset-wide predict loop and protocols (`common.py`), one module per kind of evaluated
dataset, chosen by the kind of `data.eval_source`: the embedded default's text-sensitivity protocols
(`synthetic.py`) or COCO AP on a prepared detection / grounding dataset (`prepared.py`); and the papers'
benchmarks (`benchmark.py`: coco.py, lvis.py, odinw.py, flickr30k.py, refcoco.py), listed in `eval.benchmarks`."""
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


def evaluate_all(predict, config, tokenizer, mesh, *, workdir: str | pathlib.Path | None = None) -> dict:
  """`evaluate`'s metrics and, under each benchmark's key, those of `eval.benchmarks`; with `workdir`, each
  benchmark's metrics, predictions and pictures are written there too (eval_<key>.json, ...)."""
  from glipjax.evaluators import benchmark
  metrics = evaluate(predict, config, tokenizer, mesh, workdir=workdir)
  for entry in config.eval.benchmarks:
    bench = benchmark.Benchmark.from_config(entry)
    result = benchmark.run(predict, config, tokenizer, mesh, bench, progress=False)
    metrics[bench.key] = result.metrics
    if workdir is not None:
      benchmark.write_result(result, pathlib.Path(workdir) / f"eval_{bench.key}.json",
                             dict(result.metrics, **result.info, dataset=bench.dataset, split=bench.split,
                                  protocol=bench.protocol))
  return metrics
