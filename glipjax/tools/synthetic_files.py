"""Synthetic scenes as files in the real formats, for workflows that start from files on disk (transfer to a
renamed vocabulary, teacher -> student self-training) on the embedded task:

  python -m glipjax.tools.synthetic_files --out runs/files/unlabelled --seed 21 --count 1000

writes into --out:
  images/000000.png ...   the scenes (PNG)
  instances.json          COCO detection json: every object boxed under its kind (category ids 1..15)
  grounding.json          MDETR-style grounding json: one entry per image with its caption, boxes carrying the
                          `tokens_positive` spans of the phrase that names them
  captions.jsonl          image + caption only, no boxes (web image-caption pairs, to pseudo-label)
  held_out.json           COCO detection json of a downstream vocabulary the embedded task never uses: the five
                          circles, named with other colour words ("crimson circle", "azure circle"); the other
                          objects are background (transfer to held-out phrasings)

Each is prepared like any dataset of its format (python -m glipjax.data.prepare --format coco|mdetr|captions).
Scenes come from the same generator as the embedded TFDS dataset (glipjax/data/synthetic.py) with their own
seed, so they never repeat its train or validation scenes (seeds 0 and 1) when --seed is another number.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from PIL import Image
from tqdm import tqdm

from glipjax.data import synthetic

# Colour words the embedded captions and kind names never contain: a vocabulary to transfer to.
HELD_OUT_COLOURS = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "amber", "purple": "violet"}


HELD_OUT_KINDS = tuple((colour, "circle") for colour in synthetic.COLOURS)


def held_out_names() -> list[str]:
  """The held-out vocabulary, in category-id order (1..5)."""
  return [f"{HELD_OUT_COLOURS[colour]} {shape}" for colour, shape in HELD_OUT_KINDS]


def _xywh(box) -> list[float]:
  """Pixel-inclusive xyxy (the records' convention) -> COCO xywh."""
  x1, y1, x2, y2 = (float(v) for v in box)
  return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def write(out: str | pathlib.Path, *, seed: int, count: int, image_size: tuple[int, int] = (128, 128),
          progress: bool = False) -> dict:
  """Writes `count` scenes generated from `seed` into `out` (see the module docstring); returns the counts."""
  out = pathlib.Path(out)
  (out / "images").mkdir(parents=True, exist_ok=True)
  categories = [dict(id=synthetic.kind_id(k), name=synthetic.kind_name(k), supercategory=k[1])
                for k in synthetic.KINDS]
  held_out_ids = {synthetic.kind_id(k): i + 1 for i, k in enumerate(HELD_OUT_KINDS)}
  images, detections, held_out, groundings, grounding_boxes, captions = [], [], [], [], [], []
  for i in tqdm(range(count), disable=not progress, desc="scenes", unit="image"):
    scene = synthetic.generate_scene(np.random.default_rng([seed, i]), image_size)
    name = f"{i:06d}.png"
    Image.fromarray(scene["image"]).save(out / "images" / name)
    h, w = scene["image"].shape[:2]
    images.append(dict(id=i, file_name=name, height=h, width=w))
    groundings.append(dict(id=i, file_name=name, height=h, width=w, caption=scene["caption"], original_img_id=i,
                           sentence_id=0))
    captions.append(dict(image=name, caption=scene["caption"]))
    for box, label, phrase in zip(scene["boxes"], scene["labels"], scene["box_phrase"]):
      xywh = _xywh(box)
      detections.append(dict(id=len(detections) + 1, image_id=i, category_id=int(label), bbox=xywh,
                             area=xywh[2] * xywh[3], iscrowd=0))
      if int(label) in held_out_ids:
        held_out.append(dict(id=len(held_out) + 1, image_id=i, category_id=held_out_ids[int(label)], bbox=xywh,
                             area=xywh[2] * xywh[3], iscrowd=0))
      if phrase >= 0:
        start, end = (int(v) for v in scene["phrase_spans"][phrase])
        grounding_boxes.append(dict(id=len(grounding_boxes) + 1, image_id=i, bbox=xywh, area=xywh[2] * xywh[3],
                                    iscrowd=0, category_id=1, tokens_positive=[[start, end]]))
  (out / "instances.json").write_text(json.dumps(dict(images=images, annotations=detections,
                                                      categories=categories)))
  (out / "grounding.json").write_text(json.dumps(dict(images=groundings, annotations=grounding_boxes,
                                                      categories=[dict(id=1, name="object")])))
  (out / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
  (out / "held_out.json").write_text(json.dumps(dict(
      images=images, annotations=held_out,
      categories=[dict(id=i + 1, name=n, supercategory="circle") for i, n in enumerate(held_out_names())])))
  return dict(images=count, boxes=len(detections), grounded_boxes=len(grounding_boxes))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, required=True, help="scene seed (0 and 1 are the embedded dataset's)")
  parser.add_argument("--count", type=int, required=True)
  parser.add_argument("--image_size", type=int, default=128)
  args = parser.parse_args(argv)
  if args.count < 1 or args.image_size < 32:
    parser.exit(2, "glipjax.tools.synthetic_files: --count must be >= 1 and --image_size >= 32\n")
  counts = write(args.out, seed=args.seed, count=args.count, image_size=(args.image_size,) * 2, progress=True)
  print(f"wrote {counts['images']} scenes ({counts['boxes']} boxes, {counts['grounded_boxes']} named by their "
        f"captions) to {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
