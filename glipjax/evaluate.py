"""Evaluate a trained run's checkpoint.

  python -m glipjax.evaluate --workdir runs/quickstart
      the newest checkpoint on the validation split of the run's `data.eval_source` (glipjax/evaluators: the
      embedded default's detection with its text-blind control and caption grounding with its text
      sensitivity; COCO AP on a prepared detection or grounding dataset). Writes predictions.json and pictures/
      into the workdir.

  python -m glipjax.evaluate --workdir RUN [--checkpoint DIR] --dataset NAME [--split S] --protocol P [--out FILE]
      [--config.eval.pre_nms_thresh=0.01 ...]
      a paper's benchmark on a dataset prepared with glipjax.data.prepare: P is coco, lvis, odinw (NAME: a suite
      of configs/odinw.py or prepared names joined by commas), flickr30k or refcoco. Scored against the
      annotation file the dataset was prepared from (or --annotations) with glipjax.score's code; writes the
      metrics to --out (default <workdir>/eval_<dataset>_<split>.json), the predictions in the protocol's
      reference format beside it (<out>_predictions.json) and a few pictures (<out>_pictures/).

`--config.a.b=value` overrides the run's saved config (evaluation settings: eval.*, data.data_dir, ...).
Prints the metrics as JSON. Runs on any number of processes (launch/local.py, launch/*): each evaluates its
shard, every image is counted once.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

import glipjax  # noqa: F401
from glipjax import config_utils, evaluators
from glipjax.evaluators import benchmark as benchmark_lib, common
from glipjax.evaluators.files import ScoreError


def evaluate(config, graphdef, params, rest, tokenizer, *, mesh, workdir=None) -> dict:
  """Nested metrics of `params` on the config's evaluated split (glipjax/evaluators)."""
  fn = common.make_predict_fn(graphdef, config)
  return evaluators.evaluate(lambda batch: fn(params, rest, batch), config, tokenizer, mesh, workdir=workdir)


CONFIG_OVERRIDES: dict = {}


def parse_flags(argv: list[str]) -> list[str]:
  rest, overrides = config_utils.split_config_flags(argv)
  CONFIG_OVERRIDES.update(overrides)
  return flags.FLAGS(rest)


def main(argv):
  del argv
  from glipjax import distributed, runtime
  from glipjax.predictor import Predictor
  f = flags.FLAGS
  distributed.initialize_from_flags()  # before any device use
  workdir = pathlib.Path(f.workdir)
  try:
    bench = None
    if f.dataset or f.protocol:
      if not (f.dataset and f.protocol):
        raise ValueError("--dataset and --protocol go together")
      bench = benchmark_lib.Benchmark(f.dataset, f.protocol, f.split, f.annotations or "", f.flickr_entities or "")
    if not (workdir / "config.json").exists():
      raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")
    overrides = dict(CONFIG_OVERRIDES)
    if f.data_dir:
      overrides["data.data_dir"] = f.data_dir
    if f.fixed_ap:
      overrides["eval.lvis_fixed_ap"] = True
    config = config_utils.apply_overrides(config_utils.load_workdir_config(workdir), overrides)
    predictor = Predictor(workdir, config=config, checkpoint=f.checkpoint)
    tokenizer = runtime.prepare_tokenizer(predictor.config, workdir)
    with predictor.context():
      if bench is None:
        metrics = evaluators.evaluate(predictor, predictor.config, tokenizer, predictor.mesh, workdir=workdir)
        print(json.dumps(dict(metrics, step=int(predictor.step)), indent=2))
        return
      result = benchmark_lib.run(predictor, predictor.config, tokenizer, predictor.mesh, bench)
  except (FileNotFoundError, ValueError, KeyError, ScoreError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  summary = dict(result.metrics, **result.info, step=int(predictor.step), dataset=bench.dataset, split=bench.split,
                 protocol=bench.protocol)
  out = f.out or workdir / f"eval_{bench.dataset.replace(',', '+')}_{bench.split}.json"
  benchmark_lib.write_result(result, pathlib.Path(out), summary)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "a training workdir (config.json + checkpoints)")
  flags.DEFINE_string("checkpoint", None, "a checkpoints folder (<run>/best, another run's) or one step of one "
                      "(<run>/checkpoints/5000); default: the newest intact one of the workdir")
  flags.DEFINE_string("dataset", None, "a prepared dataset (odinw: a suite or names joined by commas)")
  flags.DEFINE_enum("protocol", None, list(benchmark_lib.PROTOCOLS), "the benchmark's protocol")
  flags.DEFINE_string("split", "validation", "the prepared split to evaluate")
  flags.DEFINE_string("out", None, "the metrics file (default <workdir>/eval_<dataset>_<split>.json)")
  flags.DEFINE_string("annotations", None, "the annotation file to score against (default: the one the dataset "
                      "was prepared from)")
  flags.DEFINE_string("flickr_entities", None, "flickr30k: the Flickr30k Entities folder (Sentences/, "
                      "Annotations/); default: the annotation file's folder")
  flags.DEFINE_string("data_dir", None, "where the datasets are prepared (default: the run's data.data_dir)")
  flags.DEFINE_bool("fixed_ap", False, "lvis: fixed AP (no per-image cap; 10,000 detections per category over "
                    "the split), as GLIP's LVIS minival figures")
  flags.mark_flag_as_required("workdir")
  from glipjax import distributed
  distributed.define_flags()
  app.run(main, flags_parser=parse_flags)
