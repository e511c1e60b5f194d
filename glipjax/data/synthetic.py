"""Synthetic grounding scenes: coloured shapes on textured backgrounds, with captions whose phrases name them.

Every image holds distractors (same shape in another colour, same colour in another shape), and the caption
names only some of the objects, so a detector that ignores the text cannot score. Phrases are unambiguous by
construction: a colour+shape phrase grounds *all* objects of that kind ("green triangles" when there are two), and
a relation phrase ("the red circle left of the blue square") is used only when it picks out exactly one object.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190)}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  kind = rng.integers(3)
  base = rng.integers(90, 200, size=3).astype(np.float32)
  if kind == 0:    # noise
    img = base + rng.normal(0, 18, (h, w, 3))
  elif kind == 1:  # stripes
    period = rng.integers(6, 16)
    stripes = ((np.arange(w) // period) % 2)[None, :, None] * rng.integers(15, 40)
    img = base + stripes + rng.normal(0, 6, (h, w, 3))
  else:            # gradient
    ramp = np.linspace(-30, 30, w)[None, :, None] * rng.choice([-1, 1])
    img = base + ramp + rng.normal(0, 6, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
  x1, y1, x2, y2 = box
  if shape == "circle":
    draw.ellipse(box, fill=colour)
  elif shape == "square":
    draw.rectangle(box, fill=colour)
  else:
    draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _place(rng, h, w, sizes, taken, max_iou=0.05):
  for _ in range(50):
    s = int(rng.integers(*sizes))
    x1, y1 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
    box = np.array([x1, y1, x1 + s - 1, y1 + s - 1], np.float32)
    ok = True
    for t in taken:
      ix = max(0.0, min(box[2], t[2]) - max(box[0], t[0]))
      iy = max(0.0, min(box[3], t[3]) - max(box[1], t[1]))
      if ix * iy > max_iou * s * s:
        ok = False
        break
    if ok:
      return box
  return None


def generate_scene(rng: np.random.Generator, image_size=(128, 128), *, min_objects: int = 2, max_objects: int = 4,
                   object_size=(20, 44), relation_prob: float = 0.25, max_phrases: int = 3) -> dict:
  """One scene: image uint8 [H,W,3] RGB, caption, boxes [N,4] xyxy (pixel-inclusive), box_phrase [N] (0-based),
  phrase_spans [P,2] (char spans in caption), phrases."""
  h, w = image_size
  image = Image.fromarray(_background(rng, h, w))
  draw = ImageDraw.Draw(image)
  colours = list(COLOURS)
  # Pick object kinds so that distractors share a colour or a shape with a named object.
  n = int(rng.integers(min_objects, max_objects + 1))
  objects, boxes = [], []
  anchor = (colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
  for i in range(n):
    if i == 0 or rng.random() < 0.3:
      kind = anchor
    elif rng.random() < 0.5:
      kind = (anchor[0], SHAPES[rng.integers(len(SHAPES))])
    else:
      kind = (colours[rng.integers(len(colours))], anchor[1])
    box = _place(rng, h, w, object_size, boxes)
    if box is None:
      continue
    boxes.append(box)
    objects.append(kind)
    _draw(draw, kind[1], tuple(box.tolist()), COLOURS[kind[0]])

  kinds = list(dict.fromkeys(objects))
  rng.shuffle(kinds)
  kinds = kinds[:max(1, int(rng.integers(1, min(max_phrases, len(kinds)) + 1)))]
  phrases, groups = [], []
  for kind in kinds:
    members = [i for i, o in enumerate(objects) if o == kind]
    single = len(members) == 1
    others = [i for i, o in enumerate(objects) if o != kind]
    if single and others and rng.random() < relation_prob:
      j = others[int(rng.integers(len(others)))]
      ref = objects[j]
      if objects.count(ref) == 1:
        left = (boxes[members[0]][0] + boxes[members[0]][2]) < (boxes[j][0] + boxes[j][2])
        rel = "left of" if left else "right of"
        phrases.append(f"the {kind[0]} {kind[1]} {rel} the {ref[0]} {ref[1]}")
        groups.append(members)
        continue
    phrases.append(f"{kind[0]} {kind[1] if single else PLURAL[kind[1]]}")
    groups.append(members)
  caption, spans = "", []
  for p in phrases:
    spans.append((len(caption), len(caption) + len(p)))
    caption += p + ". "
  caption = caption.strip()
  box_phrase = np.full(len(objects), -1, np.int32)
  for pi, members in enumerate(groups):
    box_phrase[members] = pi
  keep = box_phrase >= 0  # unnamed objects are distractors: no box target
  return dict(image=np.asarray(image), caption=caption, boxes=np.stack(boxes)[keep].astype(np.float32),
              box_phrase=box_phrase[keep], phrase_spans=np.asarray(spans, np.int32).reshape(-1, 2), phrases=phrases)
