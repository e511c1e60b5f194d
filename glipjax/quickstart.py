"""The embedded default job (`make quickstart`): build the synthetic grounding dataset with TFDS, train the tiny
GLIP on CPU, evaluate COCO AP on the validation split, and draw predictions.

  python -m glipjax.quickstart --workdir runs/quickstart [--config.train.num_steps=300 ...]

Writes into the workdir: checkpoints/, TensorBoard events + metrics.jsonl, config.json, tokenizer.model,
pictures/*.png, predictions.json and final_metrics.json (AP, AP50, steps, wall_seconds, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import glipjax  # noqa: F401
from configs import tiny
from glipjax import config_utils, trainer


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
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="Any key of configs/tiny.py: --config.KEY=VALUE, e.g. "
                                          "--config.train.num_steps=300 (type-checked, as glipjax.train takes it).")
  parser.add_argument("--workdir", default="runs/quickstart")
  try:
    rest, overrides = config_utils.split_config_flags(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    config = config_utils.apply_overrides(tiny.get_config(), overrides)
  except (KeyError, ValueError) as e:
    parser.exit(2, f"glipjax.quickstart: {e.args[0] if isinstance(e, KeyError) else e}\n")
  logging.basicConfig(level=logging.WARNING)
  t0 = time.time()
  print(f"glipjax quickstart: tiny GLIP on the synthetic grounding dataset -> {args.workdir}", flush=True)
  final = trainer.train_and_evaluate(config, args.workdir)
  print(report(final))
  print(f"done in {time.time() - t0:.0f} s: metrics in {args.workdir}/final_metrics.json, pictures in "
        f"{args.workdir}/pictures/, TensorBoard: tensorboard --logdir {args.workdir}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
