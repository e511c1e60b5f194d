"""What every format's reader shares: images read in parallel (robustly, skips counted), boxes repaired or
dropped (counted), caption spans checked against the caption (repaired or dropped, counted)."""
from __future__ import annotations

import concurrent.futures
import math
import os
import pathlib
import re
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from glipjax.data import images
from glipjax.data.sources import Stats

T = TypeVar("T")


def read_images(items: Iterable[T], path_of: Callable[[T], pathlib.Path], stats: Stats, *,
                expected_hw: Callable[[T], tuple[int, int] | None] = lambda _: None,
                workers: int | None = None) -> Iterator[tuple[T, images.ReadImage]]:
  """(item, image) for each item whose image reads, in order, decoded on a thread pool (PIL releases the GIL);
  unreadable images are counted under their reason with the path, and their items skipped."""
  workers = workers or min(16, (os.cpu_count() or 2) * 2)

  def load(item):
    try:
      return item, images.read_image(path_of(item), expected_hw=expected_hw(item))
    except images.BadImage as e:
      return item, e

  items = iter(items)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = [pool.submit(load, it) for _, it in zip(range(workers * 4), items)]
    while pending:
      item, result = pending.pop(0).result()
      nxt = next(items, None)
      if nxt is not None:
        pending.append(pool.submit(load, nxt))
      if isinstance(result, images.BadImage):
        stats.count(f"images skipped: {result.reason}", where=str(path_of(item)))
        continue
      for r in result.repairs:
        stats.count(f"images repaired: {r}", where=str(path_of(item)))
      yield item, result


def _four_floats(bbox) -> tuple[float, float, float, float] | None:
  if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
    return None
  try:
    values = tuple(float(v) for v in bbox)
  except (TypeError, ValueError):
    return None
  return values if all(math.isfinite(v) for v in values) else None


def xywh_box(bbox) -> np.ndarray | None:
  """COCO [x, y, w, h] -> pixel-inclusive xyxy (x2 = x + w - 1, maskrcnn_benchmark's TO_REMOVE), None if malformed."""
  v = _four_floats(bbox)
  return None if v is None else np.array([v[0], v[1], v[0] + v[2] - 1, v[1] + v[3] - 1], np.float32)


def xyxy_box(bbox) -> np.ndarray | None:
  """[x1, y1, x2, y2] with an exclusive far edge (ODVG, Grounding-DINO style) -> pixel-inclusive xyxy."""
  v = _four_floats(bbox)
  return None if v is None else np.array([v[0], v[1], v[2] - 1, v[3] - 1], np.float32)


def fit_boxes(boxes: list, height: int, width: int, stats: Stats, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Boxes (None = malformed) -> (kept boxes [K, 4] clipped to the image, indices of the kept ones). Boxes partly
  outside are clipped; malformed, zero-area, negative and fully outside ones are dropped; all counted."""
  kept, index = [], []
  for i, b in enumerate(boxes):
    if b is None:
      stats.count("boxes dropped: malformed bbox", where=where)
      continue
    if b[2] < b[0] or b[3] < b[1]:
      stats.count("boxes dropped: zero-area or negative", where=where)
      continue
    c = b.copy()
    c[0::2] = c[0::2].clip(0, width - 1)
    c[1::2] = c[1::2].clip(0, height - 1)
    if not (c[2] > c[0] and c[3] > c[1]):
      stats.count("boxes dropped: zero-area or outside the image" if (b[2] > b[0] and b[3] > b[1])
                  else "boxes dropped: zero-area or negative", where=where)
      continue
    if not np.array_equal(c, b):
      stats.count("boxes clipped to the image", where=where)
    kept.append(c)
    index.append(i)
  return np.asarray(kept, np.float32).reshape(-1, 4), np.asarray(index, np.int64)


_WORD = re.compile(r"\w")


def fit_span(span, caption: str, stats: Stats, where: str) -> tuple[int, int] | None:
  """A [begin, end) character span checked against `caption`: clipped to it, widened to whole words when it
  cuts one, dropped (None) when malformed, empty or outside the caption; repairs and drops counted."""
  if not isinstance(span, (list, tuple)) or len(span) != 2:
    stats.count("spans dropped: malformed", where=where)
    return None
  try:
    b, e = int(span[0]), int(span[1])
  except (TypeError, ValueError):
    stats.count("spans dropped: malformed", where=where)
    return None
  n = len(caption)
  if b >= n or e <= 0 or e <= b:
    stats.count("spans dropped: empty or beyond the caption", where=where)
    return None
  if b < 0 or e > n:
    stats.count("spans clipped to the caption", where=where)
    b, e = max(b, 0), min(e, n)
  nb, ne = b, e
  while nb > 0 and _WORD.match(caption[nb - 1]) and _WORD.match(caption[nb]):
    nb -= 1
  while ne < n and _WORD.match(caption[ne - 1]) and _WORD.match(caption[ne]):
    ne += 1
  if (nb, ne) != (b, e):
    stats.count("spans widened to whole words", where=where)
  if not caption[nb:ne].strip():
    stats.count("spans dropped: empty or beyond the caption", where=where)
    return None
  return nb, ne


def group_phrases(box_spans: list[list[tuple[int, int]]]):
  """Boxes' span lists -> (phrase_spans [S, 2], span_phrase [S], box_phrase [N]): boxes with the same spans share
  one phrase (MDETR writes a phrase's spans on each of its boxes); a box without spans gets -1."""
  phrases: dict[tuple, int] = {}
  box_phrase = []
  for spans in box_spans:
    key = tuple(sorted(set(spans)))
    if not key:
      box_phrase.append(-1)
      continue
    box_phrase.append(phrases.setdefault(key, len(phrases)))
  flat = [(s, p) for key, p in phrases.items() for s in key]
  spans = np.asarray([s for s, _ in flat], np.int32).reshape(-1, 2)
  return spans, np.asarray([p for _, p in flat], np.int32), np.asarray(box_phrase, np.int32)
