"""Synthetic grounding scenes: coloured shapes on textured backgrounds, every object labelled with its kind.

There are 15 kinds (5 colours x 3 shapes). Every scene holds distractors (the same shape in another colour, the
same colour in another shape), every object is boxed and labelled with its kind (category ids 1..15, so the
pipeline can turn a scene into a detection prompt with negatives), and a caption names some of the objects.
Caption phrases are unambiguous by construction: a colour+shape phrase grounds *all* objects of that kind
("green triangles" when there are two), and a relation phrase ("the red circle left of the blue square") is
used only when it picks out exactly one object.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190)}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
KINDS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)  # category id = index + 1


def kind_id(kind: tuple[str, str]) -> int:
  return KINDS.index(tuple(kind)) + 1


def kind_name(kind: tuple[str, str], plural: bool = False) -> str:
  return f"{kind[0]} {PLURAL[kind[1]] if plural else kind[1]}"


def category_names() -> list[str]:
  """The detection vocabulary, in category-id order: 'red circle', 'red square', ..., 'purple triangle'."""
  return [kind_name(k) for k in KINDS]


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


def join_phrases(phrases) -> tuple[str, np.ndarray]:
  """'p1. p2.' and the character span of each phrase."""
  caption, spans = "", []
  for p in phrases:
    spans.append((len(caption), len(caption) + len(p)))
    caption += p + ". "
  return caption.strip(), np.asarray(spans, np.int32).reshape(-1, 2)


def generate_scene(rng: np.random.Generator, image_size=(128, 128), *, min_objects: int = 2, max_objects: int = 4,
                   object_size=(20, 44), relation_prob: float = 0.25, max_phrases: int = 3) -> dict:
  """One scene: image uint8 [H,W,3] RGB; every object's box [N,4] (xyxy, pixel-inclusive) and kind `labels` [N]
  (1..15); the caption, its `phrase_spans` [P,2] (char spans), `phrases`, `phrase_labels` [P] (the kind each
  phrase names) and `box_phrase` [N] (the phrase grounding each object, -1 for objects the caption leaves out)."""
  h, w = image_size
  image = Image.fromarray(_background(rng, h, w))
  draw = ImageDraw.Draw(image)
  colours = list(COLOURS)
  # Pick object kinds so that distractors share a colour or a shape with the first object: after it, another
  # of the same kind (plurals) or a different kind of the same colour or the same shape.
  n = int(rng.integers(min_objects, max_objects + 1))
  objects, boxes = [], []
  anchor = (colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
  same_colour = [(anchor[0], s) for s in SHAPES if s != anchor[1]]
  same_shape = [(c, anchor[1]) for c in colours if c != anchor[0]]
  for i in range(n):
    if i == 0 or rng.random() < 0.25:
      kind = anchor
    elif rng.random() < 0.5:
      kind = same_colour[rng.integers(len(same_colour))]
    else:
      kind = same_shape[rng.integers(len(same_shape))]
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
        phrases.append(f"the {kind_name(kind)} {rel} the {kind_name(ref)}")
        groups.append(members)
        continue
    phrases.append(kind_name(kind, plural=not single))
    groups.append(members)
  caption, spans = join_phrases(phrases)
  box_phrase = np.full(len(objects), -1, np.int32)
  for pi, members in enumerate(groups):
    box_phrase[members] = pi
  return dict(image=np.asarray(image), caption=caption, boxes=np.stack(boxes).astype(np.float32),
              labels=np.array([kind_id(o) for o in objects], np.int32), box_phrase=box_phrase,
              phrase_spans=spans, phrases=phrases, phrase_labels=np.array([kind_id(k) for k in kinds], np.int32))


def _head(words: list[str]) -> int | None:
  """Index of the colour word of a phrase's head kind ('red circles', 'the red circle left of ...')."""
  return next((i for i, word in enumerate(words[:-1]) if word in COLOURS and
               words[i + 1].removesuffix("s") in SHAPES), None)


def phrase_kind(phrase: str) -> int | None:
  """The kind id a phrase's head names ('green triangles' -> green triangle), None if it names no kind."""
  words = phrase.split(" ")
  i = _head(words)
  return None if i is None else kind_id((words[i], words[i + 1].removesuffix("s")))


def rewrite_caption(caption: str, phrase_spans: np.ndarray, labels: np.ndarray, mode: str,
                    rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
  """The caption with each phrase's head kind changed, for text-sensitivity evaluation. `colour_swapped`: the
  head colour becomes another colour ('red circle' -> 'blue circle'); `absent_kinds`: the head becomes a kind
  absent from the scene (`labels`: the kinds present). The rest of a phrase (plural, relation) is kept. Returns
  (caption, spans, the kind each new phrase names)."""
  present = {KINDS[int(l) - 1] for l in labels}
  phrases, kinds = [], []
  for beg, end in np.asarray(phrase_spans).reshape(-1, 2):
    words = caption[beg:end].split(" ")
    i = _head(words)
    if i is None:
      raise ValueError(f"phrase {caption[beg:end]!r} names no colour and shape")
    colour, shape = words[i], words[i + 1]
    plural = shape in PLURAL.values()
    shape = shape[:-1] if plural else shape
    if mode == "colour_swapped":
      others = [c for c in COLOURS if c != colour]
      new = (others[int(rng.integers(len(others)))], shape)
    elif mode == "absent_kinds":
      absent = [k for k in KINDS if k not in present]
      new = absent[int(rng.integers(len(absent)))]
    else:
      raise ValueError(f"unknown caption rewrite {mode!r}; use 'colour_swapped' or 'absent_kinds'")
    words[i:i + 2] = kind_name(new, plural).split(" ")
    phrases.append(" ".join(words))
    kinds.append(kind_id(new))
  caption, spans = join_phrases(phrases)
  return caption, spans, np.array(kinds, np.int32)
