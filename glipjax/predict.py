"""Detect the phrases of a prompt in an image with a trained run, and draw them.

  python -m glipjax.predict --workdir runs/quickstart --image picture.png --prompt "red circle. blue square."

Writes `<output>.png` (boxes, phrase labels, scores) and `<output>.json` (COCO results format; category_id is the
phrase index in the prompt, 1-based, and `phrase` names it).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

import glipjax  # noqa: F401
from glipjax import runtime, sharding, visualize
from glipjax.data import pipeline, transforms
from glipjax.data.batch import MODEL_INPUTS, BatchSpec
from glipjax.predictor import Predictor
from glipjax.ops.postprocess import to_coco_results


def split_prompt(prompt: str) -> tuple[str, list[str], list[tuple[int, int]]]:
  """'red circle. blue square.' -> phrases and their character spans in the cleaned prompt."""
  phrases = [p.strip() for p in prompt.split(".") if p.strip()]
  if not phrases:
    raise ValueError("empty prompt: give phrases separated by '.', e.g. 'red circle. blue square.'")
  text, spans = "", []
  for p in phrases:
    spans.append((len(text), len(text) + len(p)))
    text += p + ". "
  return text.strip(), phrases, spans


def load_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
    raise ValueError(f"cannot read image {path!r}: {e}") from e


def predict(workdir: str | pathlib.Path, image: np.ndarray, prompt: str, *, score_thresh: float | None = None):
  """Returns (detections list of dicts in original-image pixels, PIL picture)."""
  workdir = pathlib.Path(workdir)
  text, phrases, spans = split_prompt(prompt)
  predictor = Predictor(workdir)
  config = predictor.config
  tokenizer = runtime.prepare_tokenizer(config, workdir)
  c = config.data
  # Any size works: the image is resized onto the canvas evaluation would give it and the rest padded.
  canvas = pipeline.eval_canvas(c, image.shape[:2])
  resized, _ = transforms.resize(image, np.zeros((0, 4), np.float32), c.eval_short_side, c.max_size, canvas)
  if tokenizer.encode(text, config.model.max_query_len).truncated:
    print(f"warning: the prompt is longer than {config.model.max_query_len} tokens and was truncated",
          file=sys.stderr)
  example = transforms.encode_example(resized, text, np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                                      [[sp] for sp in spans], tokenizer, BatchSpec.from_config(config, canvas),
                                      allow_empty=True)
  batch = {k: example[k][None] for k in MODEL_INPUTS}
  h, w = resized.shape[:2]
  with predictor.context():
    dets = jax.tree.map(np.asarray, predictor(sharding.global_batch(batch, sharding.replicated(predictor.mesh))))
  scales = np.array([[image.shape[0] / h, image.shape[1] / w]])
  results = to_coco_results(dets, [0], scales)
  thresh = config.eval.picture_score_thresh if score_thresh is None else score_thresh
  results = [dict(r, phrase=phrases[r["category_id"] - 1]) for r in results if r["score"] >= thresh]
  boxes = np.array([[x, y, x + bw - 1, y + bh - 1] for x, y, bw, bh in (r["bbox"] for r in results)]).reshape(-1, 4)
  picture = visualize.draw_detections(image, boxes, [r["phrase"] for r in results], [r["score"] for r in results],
                                      [r["category_id"] for r in results],
                                      scale=max(1, 384 // max(image.shape[:2])))
  return results, picture


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--image", required=True)
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--output", default=None, help="output path without suffix (default: next to the image)")
  parser.add_argument("--score-thresh", type=float, default=None)
  args = parser.parse_args(argv)
  try:
    image = load_image(args.image)
    results, picture = predict(args.workdir, image, args.prompt, score_thresh=args.score_thresh)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.output) if args.output else pathlib.Path(args.image).with_suffix("")
  out = out.parent / (out.name + "_glip")
  picture.save(out.with_suffix(".png"))
  out.with_suffix(".json").write_text(json.dumps(results, indent=2))
  print(f"{len(results)} detections -> {out.with_suffix('.png')} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
