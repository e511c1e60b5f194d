"""The COCO detection protocol on the official annotation file: pycocotools' COCOeval (bbox, maxDets 1/10/100),
ground truth as the file has it (crowd regions, official areas, every box), on a COCO results file
`[{image_id, category_id, bbox: [x, y, w, h], score}]` in the file's own ids and original image pixels."""
from __future__ import annotations

import json
import pathlib

from glipjax.evaluators.common import coco_metrics


class ScoreError(ValueError):
  """A results or annotation file that cannot be scored: the message names the file and the record."""


def _load(path: pathlib.Path, what: str):
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise ScoreError(f"{what} file {path} does not exist") from e
  except json.JSONDecodeError as e:
    raise ScoreError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def check_results(results, gt: dict, path: pathlib.Path) -> list[dict]:
  """The results as pycocotools needs them, or a ScoreError naming the first bad record."""
  if not isinstance(results, list):
    raise ScoreError(f"{path}: a COCO results file is a JSON list of detections")
  images = {im["id"] for im in gt.get("images", [])}
  categories = {c["id"] for c in gt.get("categories", [])}
  for n, r in enumerate(results):
    if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
      raise ScoreError(f"{path}: record {n} needs image_id, category_id, bbox and score; got {r!r:.200}")
    if r["image_id"] not in images:
      raise ScoreError(f"{path}: record {n} names image_id {r['image_id']!r}, which the annotation file lacks")
    if r["category_id"] not in categories:
      raise ScoreError(f"{path}: record {n} names category_id {r['category_id']!r}, which the annotation file "
                       "lacks")
    box = r["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
      raise ScoreError(f"{path}: record {n} has bbox {box!r}; expected [x, y, width, height]")
  return results


def score_files(annotations: str | pathlib.Path, results: str | pathlib.Path) -> dict[str, float]:
  """COCO metrics (AP, AP50, AP75, APs, APm, APl; pycocotools' -1 for an empty area range reported as 0) of a
  results file against an annotation file."""
  annotations, results = pathlib.Path(annotations), pathlib.Path(results)
  gt = _load(annotations, "annotation")
  if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
    raise ScoreError(f"{annotations}: a COCO annotation file has images, annotations and categories")
  return coco_metrics(gt, check_results(_load(results, "results"), gt, results))
