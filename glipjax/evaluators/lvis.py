"""The LVIS detection protocol on the official annotation file (LVIS v1: minival, val): bbox AP exactly as the
`lvis` package (lvis-api 0.5.3) computes it, federated evaluation included: a detection counts only in an image
whose annotations or `neg_category_ids` name its category, and an unmatched one of a category in the image's
`not_exhaustive_category_ids` is no false positive. AP, AP50, AP75, APs/m/l, and APr/APc/APf over the rare,
common and frequent categories.

Two kinds of AP:
- standard (`fixed_ap=False`): the package's own, at most `max_dets` (300) detections per image;
- fixed AP (`fixed_ap=True`), Dave et al. 2021 ("Evaluating large-vocabulary object detectors: the devil is in the
  details"), as GLIP's LVIS minival figures are taken: no cap per image, instead the best `max_dets_per_category`
  (10,000) detections of each category over the whole split, as their `scripts/evaluate_ap_fixed.py` does.

Results are a COCO results list `[{image_id, category_id, bbox: [x, y, w, h], score}]` in the file's own ids and
original image pixels.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import pathlib
import types
import warnings

import numpy as np

from glipjax.evaluators.files import ScoreError, check_detections, is_xywh, load_json

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FREQUENCIES = ("r", "c", "f")
_log = logging.getLogger(__name__)


class _NumpyWithFloat(types.ModuleType):
  """numpy as lvis 0.5.3's eval.py sees it: its accumulate() casts with `np.float`, the alias of the builtin float
  that numpy 1.24 removed; everything else is numpy itself."""
  float = float

  def __getattr__(self, name):
    return getattr(np, name)


@functools.cache
def _api() -> types.SimpleNamespace:
  """The lvis package's LVIS (taking an in-memory dict), LVISResults and LVISEval, imported on first use: the
  package imports matplotlib and OpenCV (for its visualiser), and calls `logging.basicConfig` on import, which
  would give the root logger a handler and a level of its own; both are put back as they were."""
  root = logging.getLogger()
  handlers, level = root.handlers[:], root.level
  try:
    import lvis
    import lvis.eval
  finally:
    root.handlers[:] = handlers
    root.setLevel(level)
  if not hasattr(np, "float"):
    lvis.eval.np = _NumpyWithFloat("numpy")

  class InMemoryLVIS(lvis.LVIS):
    """`LVIS(dict)`: 0.5.3's constructor only reads a file (`_load_json(path)`); this takes the dict already in
    memory, so neither a temporary file nor a second JSON parse of a large annotation file is needed, and the
    package's own constructor still builds the index."""

    def _load_json(self, path_or_dataset):
      return path_or_dataset if isinstance(path_or_dataset, dict) else super()._load_json(path_or_dataset)

  return types.SimpleNamespace(LVIS=InMemoryLVIS, LVISResults=lvis.LVISResults, LVISEval=lvis.LVISEval)


@contextlib.contextmanager
def _quiet():
  """The package's info logs, its 'Assuming user provided the results in correct format.' warning (through the
  deprecated `Logger.warn`) and any print, silenced."""
  logger = logging.getLogger("lvis")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
      warnings.simplefilter("ignore", DeprecationWarning)
      yield
  finally:
    logger.setLevel(level)


def top_per_category(results: list[dict], k: int) -> list[dict]:
  """The best `k` detections of each category over all images (fixed AP's cap), grouped by category in order of
  first appearance, best first, ties in their given order: the order evaluate_ap_fixed.py hands the package."""
  by_category: dict = {}
  for r in results:
    by_category.setdefault(r["category_id"], []).append(r)
  return [r for rs in by_category.values() for r in sorted(rs, key=lambda r: r["score"], reverse=True)[:k]]


def score(gt: dict, results: list[dict], *, fixed_ap: bool = False, max_dets: int = 300,
          max_dets_per_category: int = 10000) -> dict[str, float]:
  """LVIS bbox metrics (METRIC_NAMES; the package's -1 for a group with no ground truth reported as 0) of
  `results` against the LVIS annotation dict `gt` (as check_ground_truth returns it). Standard AP keeps each
  image's best `max_dets` (-1: all); fixed AP ignores `max_dets` and keeps each category's best
  `max_dets_per_category` over the split. Neither `gt` nor `results` is modified."""
  if fixed_ap and max_dets_per_category < 1:
    raise ValueError(f"max_dets_per_category must be positive, got {max_dets_per_category}")
  if not results or not gt["annotations"]:
    return {k: 0.0 for k in METRIC_NAMES}
  api = _api()
  results = [dict(r) for r in results]  # LVISResults writes id, area and a segmentation into each record
  if fixed_ap:
    results, max_dets = top_per_category(results, max_dets_per_category), -1
  with _quiet():
    # The annotations shallow-copied: LVISEval marks each with `ignore`/`_ignore`.
    lvis_gt = api.LVIS(dict(gt, annotations=[dict(a) for a in gt["annotations"]]))
    # LVISResults deep-copies its ground truth's dataset only to replace its annotations: hand it one without.
    lvis_dt = api.LVISResults(api.LVIS(dict(gt, annotations=[])), results, max_dets=max_dets)
    ev = api.LVISEval(lvis_gt, lvis_dt, "bbox")
    ev.params.max_dets = max_dets
    ev.run()
  _log.info("LVIS %s eval: %s", "fixed AP" if fixed_ap else "standard AP",
            {k: round(float(v), 4) for k, v in ev.results.items()})
  return {k: float(max(ev.results[k], 0.0)) for k in METRIC_NAMES}


def check_results(results, gt: dict, path: pathlib.Path) -> list[dict]:
  """The results as the lvis package needs them, or a ScoreError naming the first bad record."""
  return check_detections(results, gt, path, kind="LVIS", category_hint=" (COCO's 80 ids are not LVIS's 1203)")


def check_ground_truth(gt, path: pathlib.Path) -> dict:
  """An LVIS annotation dict as the lvis package needs it (each annotation's `area` and `id` filled in when a
  custom file leaves them out), or a ScoreError naming the first bad record; a COCO file (no frequencies, no
  negative / not-exhaustive lists) is refused rather than scored without federated evaluation."""
  if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
    raise ScoreError(f"{path}: an LVIS annotation file has images, annotations and categories")
  not_lvis = "not an LVIS v1 annotation file (a COCO file? score it with the coco protocol)"
  for n, c in enumerate(gt["categories"]):
    if not isinstance(c, dict) or "id" not in c:
      raise ScoreError(f"{path}: categories[{n}] has no id; got {c!r:.200}")
    if c.get("frequency") not in FREQUENCIES:
      what = f"frequency {c['frequency']!r}" if "frequency" in c else "no frequency"
      raise ScoreError(f"{path}: categories[{n}] (id {c['id']!r}) has {what}, expected 'r', 'c' or 'f': "
                       f"{not_lvis}")
  for n, im in enumerate(gt["images"]):
    if not isinstance(im, dict) or "id" not in im:
      raise ScoreError(f"{path}: images[{n}] has no id; got {im!r:.200}")
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
      if not isinstance(im.get(key), list):
        raise ScoreError(f"{path}: images[{n}] (id {im['id']!r}) has no {key} list: {not_lvis}")
  images = {im["id"] for im in gt["images"]}
  categories = {c["id"] for c in gt["categories"]}
  ids = [a.get("id") for a in gt["annotations"] if isinstance(a, dict)]
  next_id = max([i for i in ids if isinstance(i, int)], default=0) + 1
  seen = set()
  for n, a in enumerate(gt["annotations"]):
    box = a.get("bbox") if isinstance(a, dict) else None
    if not is_xywh(box):
      raise ScoreError(f"{path}: annotations[{n}] has bbox {box!r:.200}; expected [x, y, width, height]")
    if a.get("image_id") not in images:
      raise ScoreError(f"{path}: annotations[{n}] names image_id {a.get('image_id')!r}, which its images lack")
    if a.get("category_id") not in categories:
      raise ScoreError(f"{path}: annotations[{n}] names category_id {a.get('category_id')!r}, which its "
                       "categories lack")
    a.setdefault("area", float(box[2] * box[3]))
    if a.get("id") is None:
      a["id"], next_id = next_id, next_id + 1
    # The package indexes annotations by id and reads a match with id 0 as no match.
    if not isinstance(a["id"], int) or a["id"] <= 0 or a["id"] in seen:
      raise ScoreError(f"{path}: annotations[{n}] has id {a['id']!r}; ids are distinct positive integers")
    seen.add(a["id"])
  return gt


def score_files(annotations: str | pathlib.Path, results: str | pathlib.Path, *, fixed_ap: bool = False,
                max_dets: int = 300, max_dets_per_category: int = 10000) -> dict[str, float]:
  """LVIS metrics (METRIC_NAMES) of a results file against an annotation file: see `score`."""
  annotations, results = pathlib.Path(annotations), pathlib.Path(results)
  gt = check_ground_truth(load_json(annotations, "annotation"), annotations)
  return score(gt, check_results(load_json(results, "results"), gt, results), fixed_ap=fixed_ap,
               max_dets=max_dets, max_dets_per_category=max_dets_per_category)


def run_benchmark(job):
  """LVIS (minival, val): the 1203 categories prompted in chunks of `eval.lvis_categories_per_prompt` (40, GLIP's),
  each image's detections of all chunks merged and the best `eval.lvis_detections_per_img` (300) kept; standard
  or fixed AP (`eval.lvis_fixed_ap`: no cap per image, every chunk's `eval.detections_per_img` kept, then the
  best `eval.lvis_max_dets_per_category` of each category over the split) against the annotation file."""
  from glipjax.evaluators import benchmark, common
  cfg = job.config.eval
  dataset = job.dataset()
  annotations = job.annotations(dataset)
  gt = check_ground_truth(load_json(annotations, "annotation"), annotations)
  detections = common.detect_categories(job, categories_per_prompt=cfg.lvis_categories_per_prompt,
                                        top_k=None if cfg.lvis_fixed_ap else cfg.lvis_detections_per_img)
  results = [r for image_id, det in sorted(detections.items()) for r in common.coco_results(image_id, det)]
  results = check_results(results, gt, f"the predictions on {dataset.name}/{job.split}")
  metrics = score(gt, results, fixed_ap=cfg.lvis_fixed_ap, max_dets=cfg.lvis_detections_per_img,
                  max_dets_per_category=cfg.lvis_max_dets_per_category)
  kind = (f"fixed AP (best {cfg.lvis_max_dets_per_category} detections per category over the split)"
          if cfg.lvis_fixed_ap else f"standard AP ({cfg.lvis_detections_per_img} detections per image)")
  names = {c.id: c.name for c in dataset.categories}
  return benchmark.Result(metrics, results, benchmark.pictures(job, detections, lambda r: names, dataset.name),
                          dict(lvis_ap=kind))
