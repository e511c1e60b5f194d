"""Padding of the canvas shapes: the share of canvas pixels that hold no image, over COCO-like image sizes at
every training scale, with a config's aspect-ratio buckets (glipjax/data/buckets.py) against one square canvas.
Goal: <= 15% padding at <= 8 compiled train shapes.

  .venv/bin/python -m benchmarks.padding [--config configs/glip_t.py:c] [--config.data.aspect_buckets=(0.75,1.333)]

The image sizes stand in for COCO val2017 (5000 images), written from its published size statistics rather than
read from files: nearly every image is 640 pixels on its long side; about half are 4:3 landscape, a quarter
3:2 landscape, a sixth portrait (3:4 and 2:3), the rest square, 16:9 and a long tail of other shapes.
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks import common
from glipjax.data.buckets import Buckets, padding_fraction

# (width / height, share of images), long side 640.
COCO_LIKE_ASPECTS = (
    (640 / 480, 0.31), (640 / 427, 0.21), (640 / 458, 0.03), (640 / 490, 0.02), (640 / 512, 0.02),
    (640 / 560, 0.02), (640 / 580, 0.01), (1.0, 0.04), (640 / 400, 0.02), (640 / 360, 0.04), (640 / 320, 0.015),
    (640 / 300, 0.01), (640 / 240, 0.005),
    (480 / 640, 0.10), (427 / 640, 0.07), (458 / 640, 0.02), (512 / 640, 0.015), (560 / 640, 0.01),
    (580 / 640, 0.005), (400 / 640, 0.01), (360 / 640, 0.015), (240 / 640, 0.005))


def coco_like_sizes(num_images: int = 5000) -> np.ndarray:
  """[N, 2] (height, width) with COCO_LIKE_ASPECTS' shares, long side 640."""
  aspects = np.array([a for a, _ in COCO_LIKE_ASPECTS])
  shares = np.array([s for _, s in COCO_LIKE_ASPECTS])
  counts = np.round(shares / shares.sum() * num_images).astype(int)
  hw = [(640 / a, 640.0) if a >= 1 else (640.0, 640 * a) for a, n in zip(aspects, counts) for _ in range(n)]
  return np.round(np.array(hw)).astype(np.int32)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_config_args(parser, "configs/glip_t.py:c")
  args = common.parse_args(parser, argv)
  config = common.load_config(args.config, common.overrides_from_args(args, {}))
  d = config.data
  hw = coco_like_sizes()
  buckets = Buckets.from_config(d)
  square = max(d.max_size, *d.canvas)
  square = (-(-square // 32) * 32,) * 2
  results = dict(config=args.config, images=len(hw), train_short_sides=list(d.train_short_sides),
                 single_canvas=list(square), single_canvas_padding=padding_fraction(
                     hw, d.train_short_sides, canvas=square, max_size=d.max_size), goal_padding=0.15, goal_shapes=8)
  if buckets is not None:
    results.update(aspect_buckets=list(buckets.aspects), train_shapes=[list(s) for s in buckets.train_shapes()],
                   eval_shapes=[list(s) for s in buckets.eval_shapes()],
                   bucket_padding=padding_fraction(hw, d.train_short_sides, buckets=buckets, max_size=d.max_size),
                   eval_bucket_padding=padding_fraction(hw, (d.eval_short_side,), buckets=buckets,
                                                        max_size=d.max_size))
    print(f"buckets {buckets.aspects} x scales {tuple(d.train_short_sides)}: {len(buckets.train_shapes())} train "
          f"shapes {buckets.train_shapes()}, padding {results['bucket_padding']:.1%} (eval at "
          f"{d.eval_short_side}: {results['eval_bucket_padding']:.1%}); goal <= 15% at <= 8 shapes")
  print(f"one {square[0]}x{square[1]} canvas: padding {results['single_canvas_padding']:.1%}")
  common.write_results("padding", results)
  return results


if __name__ == "__main__":
  main()
