"""Aspect-ratio buckets: a small fixed set of static canvas shapes, so XLA compiles a bounded number of steps
while little of each canvas is padding.

A bucket is a canvas aspect ratio (width / height). Each image joins the bucket nearest to its own aspect ratio
(in log space: a 4:3 image is as far from 1:1 as from 16:9), and every batch holds images of one bucket at one
training scale. The canvas of bucket R at short side s is s on its short side and s * max(R, 1/R) on its long
side, the long side capped at `max_size`, both rounded up to a multiple of `divisor` (Swin's stride-32 grid);
an image is resized to fit its canvas (short side at most s, long side at most `max_size`). So a run compiles
`len(short_sides) * len(aspects)` train steps and `len(aspects)` eval steps.

GLIP draws a scale per image and pads each batch to its own largest image (maskrcnn_benchmark groups batches
into landscape and portrait); static shapes need the scale drawn per batch instead, which keeps the
distribution of scales an image sees.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from glipjax.data import transforms


def _round_up(x: float, divisor: int) -> int:
  return int(math.ceil(x / divisor - 1e-9)) * divisor


@dataclasses.dataclass(frozen=True)
class Buckets:
  aspects: tuple[float, ...]      # canvas width / height, one per bucket
  short_sides: tuple[int, ...]    # training scales, one drawn per batch
  eval_short_side: int
  max_size: int
  divisor: int = 32

  def __post_init__(self):
    if not self.aspects or any(not (0.05 <= a <= 20) for a in self.aspects):
      raise ValueError(f"data.aspect_buckets must be canvas aspect ratios (width / height) in [0.05, 20]; got "
                       f"{self.aspects!r}")
    if not self.short_sides or min(self.short_sides) < 1:
      raise ValueError(f"data.train_short_sides must be positive sizes; got {self.short_sides!r}")

  @classmethod
  def from_config(cls, data_cfg) -> "Buckets | None":
    """The config's buckets, or None when `data.aspect_buckets` is empty (one canvas, `data.canvas`)."""
    if not data_cfg.aspect_buckets:
      return None
    return cls(tuple(float(a) for a in data_cfg.aspect_buckets), tuple(int(s) for s in data_cfg.train_short_sides),
               int(data_cfg.eval_short_side), int(data_cfg.max_size))

  def canvas(self, bucket: int, short_side: int) -> tuple[int, int]:
    """(H, W) of `bucket` at `short_side`."""
    aspect = self.aspects[bucket]
    long_side = min(short_side * max(aspect, 1 / aspect), self.max_size)
    h, w = (short_side, long_side) if aspect >= 1 else (long_side, short_side)
    return _round_up(h, self.divisor), _round_up(w, self.divisor)

  def train_shapes(self) -> list[tuple[int, int]]:
    return sorted({self.canvas(b, s) for b in range(len(self.aspects)) for s in self.short_sides})

  def eval_shapes(self) -> list[tuple[int, int]]:
    return sorted({self.canvas(b, self.eval_short_side) for b in range(len(self.aspects))})

  def assign(self, image_hw: np.ndarray) -> np.ndarray:
    """[N, 2] image (height, width) -> [N] bucket index: the nearest canvas aspect ratio in log space."""
    hw = np.asarray(image_hw, np.float64).reshape(-1, 2)
    log_aspect = np.log(np.maximum(hw[:, 1], 1) / np.maximum(hw[:, 0], 1))
    return np.abs(log_aspect[:, None] - np.log(np.asarray(self.aspects))[None, :]).argmin(1).astype(np.int32)

  def canvases(self, image_hw: np.ndarray, short_side: int) -> np.ndarray:
    """[N, 2] image sizes -> [N, 2] the (H, W) of each image's canvas at `short_side`."""
    return np.array([self.canvas(b, short_side) for b in self.assign(image_hw)], np.int64).reshape(-1, 2)


def padding_fraction(image_hw: np.ndarray, short_sides, *, buckets: Buckets | None = None,
                     canvas: tuple[int, int] | None = None, max_size: int = 1333) -> float:
  """The share of canvas pixels that are padding over images `image_hw` [N, 2], each at every scale of
  `short_sides` (equally likely), on `buckets` or else on the single `canvas`, resized as the pipeline does."""
  hw = np.asarray(image_hw, np.float64).reshape(-1, 2)
  padded = used = 0.0
  for s in short_sides:
    canvases = buckets.canvases(hw, s) if buckets is not None else np.broadcast_to(np.float64(canvas), hw.shape)
    placed = np.maximum(1, np.round(hw * transforms.resize_scale(hw, s, max_size, canvases)[:, None]))
    used += float((placed[:, 0] * placed[:, 1]).sum())
    padded += float((canvases[:, 0] * canvases[:, 1]).sum())
  return 1.0 - used / padded
