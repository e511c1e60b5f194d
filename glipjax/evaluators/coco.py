"""The COCO detection protocol on the official annotation file: pycocotools' COCOeval (bbox, maxDets 1/10/100),
ground truth as the file has it (crowd regions, official areas, every box), on a COCO results file
`[{image_id, category_id, bbox: [x, y, w, h], score}]` in the file's own ids and original image pixels."""
from __future__ import annotations

import pathlib

from glipjax.evaluators.common import coco_metrics
from glipjax.evaluators.files import ScoreError, check_detections, load_json


def check_results(results, gt: dict, path: pathlib.Path) -> list[dict]:
  """The results as pycocotools needs them, or a ScoreError naming the first bad record."""
  return check_detections(results, gt, path, kind="COCO")


def check_ground_truth(gt, path: pathlib.Path) -> dict:
  """A COCO annotation dict as COCOeval needs it (each annotation's `iscrowd`, `area` and `id` filled in when a
  custom file leaves them out), or a ScoreError naming the first bad annotation."""
  if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
    raise ScoreError(f"{path}: a COCO annotation file has images, annotations and categories")
  images = {im.get("id") for im in gt["images"] if isinstance(im, dict)}
  ids = {a.get("id") for a in gt["annotations"] if isinstance(a, dict)}
  next_id = max([i for i in ids if isinstance(i, int)], default=0) + 1
  for n, a in enumerate(gt["annotations"]):
    box = a.get("bbox") if isinstance(a, dict) else None
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
      raise ScoreError(f"{path}: annotations[{n}] has bbox {box!r}; expected [x, y, width, height]")
    if a.get("image_id") not in images:
      raise ScoreError(f"{path}: annotations[{n}] names image_id {a.get('image_id')!r}, which its images lack")
    a.setdefault("iscrowd", 0)
    a.setdefault("area", float(box[2] * box[3]))
    if a.get("id") is None:
      a["id"], next_id = next_id, next_id + 1
  return gt


def score_files(annotations: str | pathlib.Path, results: str | pathlib.Path) -> dict[str, float]:
  """COCO metrics (AP, AP50, AP75, APs, APm, APl; pycocotools' -1 for an empty area range reported as 0) of a
  results file against an annotation file."""
  annotations, results = pathlib.Path(annotations), pathlib.Path(results)
  gt = check_ground_truth(load_json(annotations, "annotation"), annotations)
  return coco_metrics(gt, check_results(load_json(results, "results"), gt, results))


def run_benchmark(job) -> "benchmark.Result":
  """COCO (and any COCO-format set: Objects365, custom): every category prompted, in chunks when they do not fit
  the query length; 100 detections per image (`eval.detections_per_img`); scored against the annotation file."""
  from glipjax.evaluators import benchmark, common
  dataset = job.dataset()
  annotations = job.annotations(dataset)
  gt = check_ground_truth(load_json(annotations, "annotation"), annotations)
  detections = common.detect_categories(job, categories_per_prompt=job.config.data.max_phrases,
                                        top_k=job.config.eval.detections_per_img)
  results = [r for image_id, det in sorted(detections.items()) for r in common.coco_results(image_id, det)]
  metrics = coco_metrics(gt, check_results(results, gt, f"the predictions on {dataset.name}/{job.split}"))
  names = {c.id: c.name for c in dataset.categories}
  return benchmark.Result(metrics, results, benchmark.pictures(job, detections, lambda r: names, dataset.name))
