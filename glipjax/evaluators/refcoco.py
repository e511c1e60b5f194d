"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression comprehension: accuracy@0.5, the share of expressions whose
top-scoring box overlaps the referred object's box with IoU >= 0.5 (MDETR's RefExpEvaluator, which GLIP reuses;
its Precision@1). One split per annotation file (val, testA, testB, test).

Ground truth is the MDETR-format json of the split (`final_refcoco_testA.json`, ...): one image entry per
expression, whose single annotation is the referred object (`bbox` xywh). Results:
`[{image_id: <image entry id>, boxes: [[x1, y1, x2, y2], ...ranked best first], scores: [...]}]`, boxes in the
original image's continuous pixel coordinates (x2 = x + w of COCO's xywh), as the reference evaluator compares
them (IoU without GLIP's +1)."""
from __future__ import annotations

import pathlib

import numpy as np

from glipjax.evaluators.files import ScoreError, load_json

TOPK = (1, 5, 10)


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
  """IoU of [N, 4] xyxy boxes with one xyxy box (continuous coordinates: area = w * h)."""
  lt, rb = np.maximum(boxes[:, :2], box[:2]), np.minimum(boxes[:, 2:], box[2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
  return inter / np.maximum(area(boxes) + area(box) - inter, 1e-12)


def targets(gt, path: pathlib.Path) -> dict[int, np.ndarray]:
  """{image entry id: the referred object's xyxy box} of an MDETR-format referring-expression file."""
  if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) or "annotations" not in gt:
    raise ScoreError(f"{path}: not an MDETR-format referring-expression file (images and annotations)")
  entries = {im.get("id") for im in gt["images"] if isinstance(im, dict)}
  out: dict[int, np.ndarray] = {}
  for n, a in enumerate(gt["annotations"]):
    box = a.get("bbox") if isinstance(a, dict) else None
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
      raise ScoreError(f"{path}: annotations[{n}] has bbox {box!r}; expected [x, y, width, height]")
    image_id = a.get("image_id")
    if image_id not in entries:
      raise ScoreError(f"{path}: annotations[{n}] names image_id {image_id!r}, which its images lack")
    if image_id in out:  # the reference evaluator asserts one referred object per expression
      raise ScoreError(f"{path}: image entry {image_id} has several annotations; a referring expression has one")
    x, y, w, h = map(float, box)
    out[image_id] = np.array([x, y, x + w, y + h])
  missing = entries - set(out)
  if missing:
    raise ScoreError(f"{path}: image entry {min(missing)} has no annotation (the referred object)")
  return out


def score(gt_boxes: dict[int, np.ndarray], results, *, path: str | pathlib.Path = "results") -> dict[str, float]:
  """{'acc@0.5': precision@1, 'acc@0.5@5', 'acc@0.5@10'} over every expression of the split: one without a result
  (or with no boxes) counts as a miss, like an expression the model found nothing for."""
  if not isinstance(results, list):
    raise ScoreError(f"{path}: a referring-expression results file is a JSON list of {{image_id, boxes, scores}}")
  hits = {k: 0 for k in TOPK}
  seen = set()
  for n, r in enumerate(results):
    if not isinstance(r, dict) or not {"image_id", "boxes"} <= set(r):
      raise ScoreError(f"{path}: record {n} needs image_id and boxes; got {r!r:.200}")
    image_id = r["image_id"]
    if image_id not in gt_boxes:
      raise ScoreError(f"{path}: record {n} names image_id {image_id!r}, which the annotation file lacks")
    if image_id in seen:
      raise ScoreError(f"{path}: record {n} repeats image_id {image_id!r}")
    seen.add(image_id)
    try:
      boxes = np.asarray(r["boxes"], np.float64).reshape(-1, 4)
    except (TypeError, ValueError) as e:
      raise ScoreError(f"{path}: record {n} has boxes that are not a list of [x1, y1, x2, y2]") from e
    if "scores" in r:  # ranked by score when scores are given (the file's order otherwise)
      scores = np.asarray(r["scores"], np.float64).reshape(-1)
      if len(scores) != len(boxes):
        raise ScoreError(f"{path}: record {n} has {len(boxes)} boxes but {len(scores)} scores")
      boxes = boxes[np.argsort(-scores, kind="stable")]
    if not len(boxes):
      continue
    overlap = iou(boxes[:max(TOPK)], gt_boxes[image_id])
    for k in TOPK:
      hits[k] += bool(overlap[:k].max() >= 0.5)
  total = max(len(gt_boxes), 1)
  return {"acc@0.5": hits[1] / total, **{f"acc@0.5@{k}": hits[k] / total for k in TOPK[1:]}}


def score_files(annotations: str | pathlib.Path, results: str | pathlib.Path) -> dict[str, float]:
  annotations, results = pathlib.Path(annotations), pathlib.Path(results)
  return score(targets(load_json(annotations, "annotation"), annotations), load_json(results, "results"),
               path=results)


def expression_prompt(record: dict):
  """The referring expression as the prompt, the whole of it one phrase (the top box of any phrase answers)."""
  from glipjax.data import prompting
  caption = record["caption"]
  return prompting.Prompt(caption, np.array([[0, len(caption)]], np.int32),
                          np.full(len(record["boxes"]), -1, np.int32), np.array([1], np.int32))


def run_benchmark(job):
  """Each expression of the split prompted alone; its detections ranked by score are the result."""
  from glipjax.evaluators import benchmark, common
  dataset = job.dataset()
  annotations = job.annotations(dataset)
  gt_boxes = targets(load_json(annotations, "annotation"), annotations)
  results, detections = [], {}
  for image_id, det in common.predict_split(job.predict, job.config, job.tokenizer, job.mesh,
                                            prompter=expression_prompt, split=job.split,
                                            progress=dataset.name if job.progress else ""):
    order = np.argsort(-det["scores"], kind="stable")
    detections[image_id] = {k: v[order] for k, v in det.items()}
    results.append(dict(image_id=image_id, boxes=benchmark.xyxy_continuous(det["boxes"][order]),
                        scores=[float(s) for s in det["scores"][order]]))
  metrics = score(gt_boxes, results, path=f"the predictions on {dataset.name}/{job.split}")
  return benchmark.Result(metrics, results, benchmark.pictures(
      job, {i: dict(d, scores=d["scores"][:1], boxes=d["boxes"][:1], category_ids=d["category_ids"][:1])
            for i, d in detections.items()}, lambda r: {1: r["caption"]}, dataset.name))
