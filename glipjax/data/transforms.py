"""Per-example numpy preprocessing: validation, resize, flip, padding onto the canvas, tokens and positive maps
(the example's fields: glipjax/data/batch.py)."""
from __future__ import annotations

import collections
import re

import numpy as np
from PIL import Image

from glipjax.data.batch import BatchSpec
from glipjax.text.prompts import token_map_from_spans
from glipjax.text.tokenizers import Tokenizer

class BadExample(ValueError):
  """An example that cannot be used (corrupt image, no valid box, ...): the pipeline skips and counts it."""


def sanitize_boxes(boxes: np.ndarray, hw: tuple[int, int], *per_box: np.ndarray):
  """Clips boxes to the image and drops non-finite or degenerate ones, with their entries of each `per_box`
  array (labels, phrase indices). Returns (boxes, [per_box arrays], number dropped)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  per_box = [np.asarray(a).reshape(-1) for a in per_box]
  for a in per_box:
    if len(a) != len(boxes):
      raise BadExample(f"{len(boxes)} boxes but {len(a)} per-box entries")
  finite = np.isfinite(boxes).all(1)
  boxes = np.where(finite[:, None], boxes, 0.0)
  boxes[:, 0::2] = boxes[:, 0::2].clip(0, hw[1] - 1)
  boxes[:, 1::2] = boxes[:, 1::2].clip(0, hw[0] - 1)
  ok = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return boxes[ok], [a[ok] for a in per_box], int((~ok).sum())


def resize_scale(image_hw, short_side: int, max_size: int, canvas=None):
  """The resize factor of image(s) (..., 2) (height, width): short side `short_side`, long side at most
  `max_size` and, given canvas size(s) (..., 2), fitting on the canvas."""
  hw = np.asarray(image_hw, np.float64)
  scale = np.minimum(short_side / hw.min(-1), max_size / hw.max(-1))
  if canvas is not None:
    canvas = np.asarray(canvas, np.float64)
    scale = np.minimum(scale, np.minimum(canvas[..., 0] / hw[..., 0], canvas[..., 1] / hw[..., 1]))
  return scale


def resize(image: np.ndarray, boxes: np.ndarray, short_side: int, max_size: int,
           canvas: tuple[int, int] | None = None):
  """Resizes by `resize_scale`; scales boxes."""
  h, w = image.shape[:2]
  scale = float(resize_scale((h, w), short_side, max_size, canvas))
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  if (nh, nw) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
  return image, boxes


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(caption: str, spans: np.ndarray) -> tuple[str, np.ndarray]:
  """Keeps a caption true under a horizontal flip: 'left' <-> 'right', with character spans moved to match."""
  pieces, shift_at, pos = [], [], 0
  for m in _LEFT_RIGHT.finditer(caption):
    pieces.append(caption[pos:m.start()])
    new = "right" if m.group(1) == "left" else "left"
    pieces.append(new)
    shift_at.append((m.end(), len(new) - len(m.group(1))))
    pos = m.end()
  pieces.append(caption[pos:])

  def moved(i):
    return i + sum(d for end, d in shift_at if end <= i)

  spans = np.array([[moved(b), moved(e)] for b, e in np.asarray(spans).reshape(-1, 2)], np.int32).reshape(-1, 2)
  return "".join(pieces), spans


def hflip(image: np.ndarray, boxes: np.ndarray, caption: str, spans: np.ndarray):
  w = image.shape[1]
  boxes = boxes.copy()
  boxes[:, [0, 2]] = (w - 1) - boxes[:, [2, 0]]
  caption, spans = swap_left_right(caption, spans)
  return image[:, ::-1], boxes, caption, spans


def pad_to(x: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, n - x.shape[axis])
  return np.pad(x, pad)


def encode_example(image: np.ndarray, caption: str, boxes: np.ndarray, box_phrase: np.ndarray,
                   phrase_spans: list[list[tuple[int, int]]], tokenizer: Tokenizer, spec: BatchSpec, *,
                   allow_empty: bool = False, dropped: collections.Counter | None = None) -> dict[str, np.ndarray]:
  """The static-shape example (already resized/flipped) as `spec` lays it out, less the record's identity
  (`image_id`, `orig_hw`, which the pipeline adds). `phrase_spans`: each phrase's character spans. Boxes whose phrase is cut off by the query length or by `max_phrases`, and boxes beyond `max_boxes`,
  are dropped and counted in `dropped`. `allow_empty`: an example without any box is kept (evaluation: a prompt
  may name nothing in the image)."""
  canvas, max_boxes, max_phrases, max_query_len = spec.canvas, spec.max_boxes, spec.max_phrases, spec.max_query_len
  h, w = image.shape[:2]
  if h > canvas[0] or w > canvas[1]:
    raise BadExample(f"image {h}x{w} larger than the canvas {canvas}")
  tok = tokenizer.encode(caption, max_query_len)
  phrase_spans = list(phrase_spans)[:max_phrases]
  phrase_map = token_map_from_spans(tok.offsets, phrase_spans, max_query_len)
  live = phrase_map.sum(1) > 0  # phrases cut off by truncation lose their boxes
  box_phrase = np.asarray(box_phrase, np.int32).reshape(-1)
  named = box_phrase >= 0
  keep = named & (box_phrase < len(phrase_spans))
  keep[keep] = live[box_phrase[keep]]
  if dropped is not None:
    dropped["boxes dropped: phrase beyond the query length or max_phrases"] += int((named & ~keep).sum())
    dropped["boxes dropped: beyond max_boxes"] += max(0, int(keep.sum()) - max_boxes)
  boxes, box_phrase = np.asarray(boxes, np.float32).reshape(-1, 4)[keep][:max_boxes], box_phrase[keep][:max_boxes]
  if len(boxes) == 0 and not allow_empty:
    raise BadExample("no box left after validation/truncation")
  canvas_img = np.zeros(tuple(canvas) + (3,), np.uint8)
  canvas_img[:h, :w] = image
  n = len(boxes)
  return dict(
      image=canvas_img, image_hw=np.array([h, w], np.int32),
      input_ids=tok.input_ids, attention_mask=tok.attention_mask,
      boxes=pad_to(boxes.astype(np.float32), max_boxes), box_mask=np.arange(max_boxes) < n,
      box_labels=pad_to((box_phrase + 1).astype(np.int32), max_boxes),
      positive_map=pad_to(phrase_map[box_phrase], max_boxes),
      phrase_map=pad_to(phrase_map, max_phrases), phrase_mask=pad_to(live, max_phrases))
