"""The embedded default job (`make quickstart`): build the synthetic grounding dataset with TFDS, train the tiny
GLIP on CPU, evaluate COCO AP on the validation split, and draw predictions.

  python -m glipjax.quickstart --workdir runs/quickstart [--set train.num_steps=300 ...]

Writes into the workdir: checkpoints/, TensorBoard events + metrics.jsonl, config.json, tokenizer.model,
pictures/*.png, predictions.json and final_metrics.json (AP, AP50, steps, wall_seconds, ...).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import time

import glipjax  # noqa: F401
from configs import tiny
from glipjax import config_utils, train


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key of configs/tiny.py, e.g. --set train.num_steps=300")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  overrides = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--set expects KEY=VALUE, got {item!r}")
    overrides[key] = _value(value)
  config = config_utils.apply_overrides(tiny.get_config(), overrides)
  t0 = time.time()
  print(f"glipjax quickstart: tiny GLIP on the synthetic grounding dataset -> {args.workdir}", flush=True)
  final = train.train_and_evaluate(config, args.workdir)
  summary = {k: v for k, v in final.items() if k in ("AP", "AP50", "AP75", "steps", "wall_seconds")}
  print(json.dumps(summary, indent=2))
  print(f"done in {time.time() - t0:.0f} s: metrics in {args.workdir}/final_metrics.json, pictures in "
        f"{args.workdir}/pictures/, TensorBoard: tensorboard --logdir {args.workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
