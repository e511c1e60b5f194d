"""Wall time of scoring a split's detections on CPU: 5,000 images' worth of COCO detections with pycocotools
(`glipjax.evaluators.common.coco_metrics`, what every COCO-format protocol and the in-training evaluation use) and
of LVIS detections with the lvis package (`glipjax.evaluators.lvis.score`, standard AP and fixed AP). Scoring runs
in one Python process after every prediction is gathered, so on a fast accelerator it can be a large share of an
evaluation's wall time; this says how large.

  .venv/bin/python -m benchmarks.scoring [--images 5000] [--lvis_images 5000] [--seed 0]

Ground truth and detections are synthetic and seeded, written to look like the real splits rather than read from
them:
- COCO-like (val2017's 5,000 images): COCO's 80 category ids, a long-tailed category distribution, Poisson(7.3)
  boxes per image, ~1% crowd regions, image sizes of `benchmarks.padding` (640 on the long side), box sizes
  log-normal around 45 px (~37% small, ~41% medium, ~22% large, COCO's split is 41/34/24); 100 detections per
  image (`eval.detections_per_img`): jittered hits on most objects, loose duplicates, confusions of category,
  and low-scored false positives filling the rest.
- LVIS-like (minival's 5,000 images): 1,203 categories with LVIS v1's 337 rare / 461 common / 405 frequent, the
  frequent ones in many more images; ~3.4 categories and ~12 boxes per image, ~8 negative categories per image,
  10% of an image's categories not exhaustively annotated; 300 detections per image (LVIS's per-image cap):
  hits, duplicates, confusions with other (often unverified) categories, and false positives spread over the
  image's positive, negative and unverified categories.
The AP each case reaches is printed with its time as a check that the detections are neither trivial nor noise.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import common
from benchmarks.padding import coco_like_sizes
from glipjax.evaluators import lvis
from glipjax.evaluators.common import coco_metrics

COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
LVIS_FREQUENCIES = {"r": 337, "c": 461, "f": 405}
LVIS_GROUP_WEIGHT = {"r": 0.3, "c": 3.0, "f": 30.0}  # relative odds of a category being in an image


def _boxes(rng, n: int, hw) -> np.ndarray:
  """[n, 4] xywh inside an image of `hw`: side sqrt(area) log-normal around 45 px, aspect log-normal."""
  h_img, w_img = hw
  side = np.exp(rng.normal(np.log(45), 1.0, n))
  aspect = np.exp(rng.normal(0, 0.5, n))
  w = np.clip(side * np.sqrt(aspect), 2, w_img)
  h = np.clip(side / np.sqrt(aspect), 2, h_img)
  return np.stack([rng.uniform(0, w_img - w), rng.uniform(0, h_img - h), w, h], 1)


def _jitter(rng, boxes: np.ndarray, scale: float) -> np.ndarray:
  """Boxes moved and resized by ~`scale` of their size: scale 0.05 matches at high IoU, 0.3 rarely at 0.5."""
  wh = np.concatenate([boxes[:, 2:], boxes[:, 2:]], 1)
  out = boxes + rng.normal(0, scale, boxes.shape) * wh
  out[:, 2:] = np.maximum(out[:, 2:], 1)
  return out


def _results(image_id: int, boxes: np.ndarray, categories, scores) -> list[dict]:
  return [dict(image_id=image_id, category_id=int(c), bbox=[round(float(v), 2) for v in b], score=float(s))
          for b, c, s in zip(boxes, categories, scores)]


def _detections(rng, image_id: int, hw, gt_boxes, gt_cats, per_image: int, confusion_ids, pick_false) -> list[dict]:
  """`per_image` detections of one image: a jittered hit on 80% of the objects, a loose duplicate on 30%, a
  confusion (the object's box, a category of `confusion_ids`) on 20%, then false positives of categories
  `pick_false(n)`, scored low, up to `per_image`; the best `per_image` kept, as a detector's top-k."""
  n = len(gt_boxes)
  parts = []
  hit = rng.random(n) < 0.8
  parts.append((_jitter(rng, gt_boxes[hit], 0.05), gt_cats[hit], rng.beta(5, 2, hit.sum())))
  dup = rng.random(n) < 0.3
  parts.append((_jitter(rng, gt_boxes[dup], 0.3), gt_cats[dup], rng.beta(2, 3, dup.sum())))
  conf = rng.random(n) < 0.2
  parts.append((_jitter(rng, gt_boxes[conf], 0.05), rng.choice(confusion_ids, conf.sum()), rng.beta(2, 4, conf.sum())))
  left = max(per_image - sum(len(p[0]) for p in parts), 0)
  parts.append((_boxes(rng, left, hw), pick_false(left), rng.beta(1, 8, left)))
  boxes, cats, scores = (np.concatenate(x) for x in zip(*parts))
  keep = np.argsort(-scores, kind="stable")[:per_image]
  return _results(image_id, boxes[keep], cats[keep], scores[keep])


def coco_like(num_images: int, seed: int, per_image: int = 100) -> tuple[dict, list[dict]]:
  """A COCO-like ground-truth dict (coco_metrics' input) and `per_image` detections per image."""
  rng = np.random.default_rng(seed)
  sizes = rng.permutation(coco_like_sizes(num_images))
  weights = 1 / np.arange(1, len(COCO_IDS) + 1)  # long-tailed: the first id ('person') ~20% of the objects
  weights /= weights.sum()
  ids = np.array(COCO_IDS)
  images, annotations, results = [], [], []
  for image_id, hw in enumerate(sizes, start=1):
    images.append(dict(id=image_id, height=int(hw[0]), width=int(hw[1])))
    n = rng.poisson(7.3)
    boxes, cats = _boxes(rng, n, hw), rng.choice(ids, n, p=weights)
    crowd = rng.random(n) < 0.01
    for b, c, is_crowd in zip(boxes, cats, crowd):
      annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(c), iscrowd=int(is_crowd),
                              bbox=[float(v) for v in b], area=float(b[2] * b[3])))
    results += _detections(rng, image_id, hw, boxes, cats, per_image, ids,
                           lambda k: rng.choice(ids, k, p=weights))
  gt = dict(images=images, annotations=annotations, categories=[dict(id=i, name=f"c{i}") for i in COCO_IDS])
  return gt, results


def lvis_like(num_images: int, seed: int, per_image: int = 300) -> tuple[dict, list[dict]]:
  """An LVIS v1-like ground-truth dict (lvis.score's input) and `per_image` detections per image."""
  rng = np.random.default_rng(seed)
  sizes = rng.permutation(coco_like_sizes(num_images))
  frequency = rng.permutation([f for f, k in LVIS_FREQUENCIES.items() for _ in range(k)])
  ids = np.arange(1, len(frequency) + 1)
  weights = np.array([LVIS_GROUP_WEIGHT[f] for f in frequency])
  weights /= weights.sum()
  images, annotations, results = [], [], []
  for image_id, hw in enumerate(sizes, start=1):
    present = rng.choice(ids, 1 + rng.poisson(2.4), replace=False, p=weights)
    rest = np.setdiff1d(ids, present)
    neg = rng.choice(rest, min(rng.poisson(8), len(rest)), replace=False, p=weights[rest - 1] / weights[rest - 1].sum())
    not_exhaustive = present[rng.random(len(present)) < 0.1]
    images.append(dict(id=image_id, height=int(hw[0]), width=int(hw[1]), neg_category_ids=[int(c) for c in neg],
                       not_exhaustive_category_ids=[int(c) for c in not_exhaustive]))
    n = max(rng.poisson(12), len(present))
    cats = np.concatenate([present, rng.choice(present, n - len(present))])
    boxes = _boxes(rng, n, hw)
    for b, c in zip(boxes, cats):
      annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(c),
                              bbox=[float(v) for v in b], area=float(b[2] * b[3])))

    def pick_false(k, present=present, neg=neg):
      where = rng.random(k)
      return np.where(where < 0.25, rng.choice(present, k),
                      np.where((where < 0.4) & (len(neg) > 0), rng.choice(neg if len(neg) else ids, k),
                               rng.choice(ids, k)))
    results += _detections(rng, image_id, hw, boxes, cats, per_image, ids, pick_false)
  categories = [dict(id=int(i), name=f"c{i}", frequency=str(f)) for i, f in zip(ids, frequency)]
  return dict(images=images, annotations=annotations, categories=categories), results


def _time(name: str, fn, num_images: int, num_detections: int) -> dict:
  start = time.perf_counter()
  metrics = fn()
  seconds = time.perf_counter() - start
  print(f"{name}: {seconds:.1f} s, {num_images / seconds:.0f} images/s ({num_images} images, {num_detections} "
        f"detections; AP {metrics['AP']:.3f})", flush=True)
  return dict(seconds=seconds, images_per_s=num_images / seconds, images=num_images, detections=num_detections,
              metrics=metrics)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=5000, help="COCO-like images (0: skip COCO)")
  parser.add_argument("--lvis_images", type=int, default=5000, help="LVIS-like images (0: skip LVIS)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  results = dict(seed=args.seed)
  if args.images:
    gt, dets = coco_like(args.images, args.seed)
    print(f"COCO-like: {len(gt['images'])} images, {len(gt['annotations'])} boxes, {len(dets)} detections")
    results["coco_gt_boxes"] = len(gt["annotations"])
    results["coco"] = _time("coco (pycocotools, 100 per image)", lambda: coco_metrics(gt, dets), args.images,
                            len(dets))
  if args.lvis_images:
    gt, dets = lvis_like(args.lvis_images, args.seed)
    print(f"LVIS-like: {len(gt['images'])} images, {len(gt['annotations'])} boxes, {len(dets)} detections")
    results["lvis_gt_boxes"] = len(gt["annotations"])
    results["lvis_standard"] = _time("lvis standard AP (300 per image)", lambda: lvis.score(gt, dets),
                                     args.lvis_images, len(dets))
    results["lvis_fixed"] = _time("lvis fixed AP (10,000 per category)", lambda: lvis.score(gt, dets, fixed_ap=True),
                                  args.lvis_images, len(dets))
  common.write_results("scoring", results)
  return results


if __name__ == "__main__":
  main()
