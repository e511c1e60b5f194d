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
from glipjax import config_utils, trainer


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def report(final: dict) -> str:
  """The three figures of the embedded task (and their controls), from final_metrics.json's contents."""
  det, gr = final.get("detection"), final.get("grounding")
  if not det or not gr:
    return json.dumps({k: v for k, v in final.items() if k in ("steps", "wall_seconds")})
  swapped, absent = gr["colour_swapped"]["AP50"], gr["absent_kinds"]["AP50"]
  ratio = swapped / gr["AP50"] if gr["AP50"] > 0 else float("nan")
  return "\n".join([
      f"detection AP50 over the 15 kinds:   {det['AP50']:.3f}  (AP {det['AP']:.3f}; the same model with a "
      f"text-blind prompt: {det['text_blind']['AP50']:.3f})",
      f"grounding AP50 of the captions:     {gr['AP50']:.3f}  (AP {gr['AP']:.3f})",
      f"colour-swapped grounding AP50:      {swapped:.3f}  ({ratio:.2f} x as written; phrases of absent kinds: "
      f"{absent:.3f})",
      f"steps {final['steps']}, wall {final['wall_seconds']:.0f} s"])


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
  final = trainer.train_and_evaluate(config, args.workdir)
  print(report(final))
  print(f"done in {time.time() - t0:.0f} s: metrics in {args.workdir}/final_metrics.json, pictures in "
        f"{args.workdir}/pictures/, TensorBoard: tensorboard --logdir {args.workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
