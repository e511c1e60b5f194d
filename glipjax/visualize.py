"""Pictures of predictions: boxes with phrase labels and scores."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60)]


def draw_detections(image_rgb: np.ndarray, boxes: np.ndarray, labels: Sequence[str], scores: Sequence[float],
                    label_ids: Sequence[int] | None = None, scale: int = 1) -> Image.Image:
  """`boxes` xyxy in image pixels; `scale` enlarges small images so the text stays readable."""
  img = Image.fromarray(np.asarray(image_rgb, np.uint8))
  if scale != 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  draw = ImageDraw.Draw(img)
  # Lowest score first, so where boxes overlap the best label is drawn on top and stays readable.
  for i in np.argsort(np.asarray(scores, np.float64), kind="stable"):
    box, text, score = boxes[i], labels[i], scores[i]
    colour = PALETTE[(label_ids[i] if label_ids is not None else i) % len(PALETTE)]
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    caption = f"{text} {score:.2f}"
    tw = draw.textlength(caption)
    ty = max(0.0, y1 - 11)
    draw.rectangle([x1, ty, x1 + tw + 2, ty + 11], fill=colour)
    draw.text((x1 + 1, ty), caption, fill=(255, 255, 255))
  return img


def best_per_object(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float = 0.5) -> np.ndarray:
  """Indices of the detections to draw: each box's best label only (greedy, across labels), so a picture shows
  one phrase per object however many phrases scored on it."""
  boxes, order, keep = np.asarray(boxes, np.float64).reshape(-1, 4), np.argsort(-np.asarray(scores)), []
  area = lambda b: (b[..., 2] - b[..., 0] + 1).clip(0) * (b[..., 3] - b[..., 1] + 1).clip(0)
  for i in order:
    if keep:
      k = boxes[keep]
      lt, rb = np.maximum(k[:, :2], boxes[i, :2]), np.minimum(k[:, 2:], boxes[i, 2:])
      inter = (rb - lt + 1).clip(0).prod(1)
      if (inter / (area(k) + area(boxes[i]) - inter)).max() > iou_thresh:
        continue
    keep.append(int(i))
  return np.asarray(keep, np.int64)
