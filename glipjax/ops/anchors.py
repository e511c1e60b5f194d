"""One square anchor per location and level (Detectron cell anchors, fixture README §4.8)."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np


def level_shapes(image_hw: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """Feature sizes of P3..P7: Swin pads to the patch size and each stride-2 step rounds up, so ceil(H / stride)."""
  return [(math.ceil(image_hw[0] / s), math.ceil(image_hw[1] / s)) for s in strides]


def cell_anchor(stride: int, size: int) -> np.ndarray:
  c = (stride - 1) / 2.0
  r = 0.5 * (size - 1)
  return np.array([c - r, c - r, c + r, c + r], np.float32)


def generate_anchors(shapes: Sequence[tuple[int, int]], strides: Sequence[int], sizes: Sequence[int]) -> np.ndarray:
  """xyxy anchors [A, 4] for all levels, row-major (y, x) within a level, levels concatenated."""
  out = []
  for (h, w), s, size in zip(shapes, strides, sizes):
    ys, xs = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 4).astype(np.float32)
    out.append(shifts + cell_anchor(s, size))
  return np.concatenate(out).astype(np.float32)


def level_counts(shapes: Sequence[tuple[int, int]]) -> tuple[int, ...]:
  return tuple(h * w for h, w in shapes)


@functools.lru_cache(maxsize=32)
def for_canvas(image_hw: tuple[int, int], strides: tuple[int, ...], sizes: tuple[int, ...]):
  """(anchors [A, 4], per-level counts) of a canvas: one set per static input shape, computed once."""
  shapes = level_shapes(image_hw, strides)
  anchors = generate_anchors(shapes, strides, sizes)
  anchors.setflags(write=False)  # shared by every caller of the cache
  return anchors, level_counts(shapes)
