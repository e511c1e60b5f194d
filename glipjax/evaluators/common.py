"""What every evaluator shares: the jitted model + post-processing, the dataset-wide predict loop (correct on any
number of processes), protocols (prompts + ground truth) scored by COCO AP with pycocotools, and pictures."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from glipjax import distributed, runtime, sharding, visualize
from glipjax.data import pipeline, prompting, records as data_records, transforms
from glipjax.data.batch import MODEL_INPUTS, model_images
from glipjax.ops.postprocess import postprocess

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Every metric a protocol reports (LVIS's frequency groups, Flickr30k's recalls, RefCOCO's accuracies).
ALL_METRIC_NAMES = METRIC_NAMES + ("APr", "APc", "APf", "Recall@1", "Recall@5", "Recall@10", "acc@0.5",
                                   "acc@0.5@5", "acc@0.5@10")


def make_predict_fn(graphdef, config):
  """jitted (params, rest, batch) -> detections (boxes in network-input pixels, 1-based phrase labels); compiled
  once per canvas shape."""
  eval_cfg = config.eval

  def predict(params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    out = model(model_images(batch["image"], batch["image_hw"]), batch["input_ids"], batch["attention_mask"])
    anchors, level_counts = runtime.anchors_for(config, batch["image"].shape[1:3])
    return postprocess(out, anchors, level_counts, batch["phrase_map"], batch["phrase_mask"], batch["image_hw"],
                       pre_nms_thresh=eval_cfg.pre_nms_thresh, pre_nms_top_n=eval_cfg.pre_nms_top_n,
                       nms_thresh=eval_cfg.nms_thresh, detections_per_img=eval_cfg.detections_per_img)
  return jax.jit(predict)


def predict_split(predict, config, tokenizer, mesh, *, prompter, split: str = "validation",
                  progress: str = "", batches: Callable | None = None) -> Iterator[tuple]:
  """Runs `predict(batch) -> detections` over one pass of `split` with `prompter` (record -> Prompt) and yields
  (image_id, detections) per image, on every process: boxes [K,4] xyxy in original-image pixels, scores [K],
  category_ids [K] (each detection's phrase mapped through the prompt's `phrase_categories`). Detections and
  the rows' identities are gathered together from the global arrays, so every process sees every image.
  `progress`: a progress bar's title (process 0), none when empty. `batches(rows)`: evaluation batches (rows
  [start, stop) of each global batch of `config.eval.global_batch_size`) to run instead of the split's pass,
  e.g. a pass over some of its records (glipjax/pseudo_label.py); `prompter` and `split` are then unused."""
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.batch_axes)
  batch_size = config.eval.global_batch_size
  rows = distributed.process_rows(batch_sharding, batch_size)
  data = batches(rows) if batches is not None else pipeline.make_pipeline(
      config.data, split, tokenizer, global_batch_size=batch_size, train=False, seed=config.seed,
      max_query_len=config.model.max_query_len, prompter=prompter, rows=rows)
  bar = tqdm(data, total=len(data) if hasattr(data, "__len__") else None, desc=progress, unit="batch",
             disable=not progress or jax.process_index() != 0, leave=False)
  for local in bar:
    meta = {k: local[k] for k in ("valid", "image_id", "orig_hw", "image_hw", "phrase_categories")}
    dets = predict(sharding.global_batch({k: local[k] for k in MODEL_INPUTS}, batch_sharding))
    both = (dets, sharding.global_batch(meta, batch_sharding))
    dets, meta = jax.tree.map(np.asarray, multihost_utils.process_allgather(both, tiled=True)
                              if jax.process_count() > 1 else both)
    for i in np.nonzero(meta["valid"])[0]:
      ok = dets["valid"][i]
      sy, sx = meta["orig_hw"][i] / meta["image_hw"][i]
      labels = dets["labels"][i][ok]
      yield int(meta["image_id"][i]), dict(
          boxes=dets["boxes"][i][ok] * np.array([sx, sy, sx, sy], np.float32), scores=dets["scores"][i][ok],
          category_ids=meta["phrase_categories"][i][labels - 1])


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How to prompt an evaluation split and what counts as ground truth."""
  name: str
  prompters: Sequence[Callable]  # one per prompt chunk: record -> prompting.Prompt
  category_ids: Sequence[int]
  detection: bool                # ground truth: every box under its category (else the caption's phrases)


def category_prompters(names: Sequence[str], tokenizer, max_query_len: int, max_phrases: int,
                       shown: Callable[[int], str] | None = None) -> list[Callable]:
  """Detection prompts naming every category (ids 1..K), in as many chunks as the query length and
  `max_phrases` need, GLIP's way of evaluating a long category list; `shown(i)` replaces category i's name."""
  chunks = prompting.chunks_that_fit(names, tokenizer, max_query_len)
  chunks = [c[i:i + max_phrases] for c in chunks for i in range(0, len(c), max_phrases)]

  def make(chunk):
    ids, words = [i + 1 for i in chunk], [shown(i) if shown else names[i] for i in chunk]
    return lambda record: prompting.category_prompt(record["labels"], ids, words)
  return [make(c) for c in chunks]


def load_records(data_cfg, split: str = "validation", *, with_images: bool = False) -> dict[int, dict]:
  """The evaluated split's canonical records by image id, boxes validated as the pipeline validates them: the
  ground truth. Each keeps its `index` in the split and its `image_hw`; the decoded image only `with_images`
  (re-read one with `record_image`)."""
  source = pipeline.eval_dataset(data_cfg, split).source
  out = {}
  for i in range(len(source)):
    r = data_records.decode(source[i])
    r["boxes"], (r["labels"], r["box_phrase"], r["iscrowd"]), _ = transforms.sanitize_boxes(
        r["boxes"], r["image"].shape[:2], r["labels"], r["box_phrase"], r["iscrowd"])
    r["index"], r["image_hw"] = i, r["image"].shape[:2]
    if not with_images:
      del r["image"]
    out[r["image_id"]] = r
  return out


def record_image(data_cfg, record: dict, split: str = "validation") -> np.ndarray:
  return np.asarray(pipeline.eval_dataset(data_cfg, split).source[record["index"]]["image"])


def ground_truth(protocol: Protocol, records: dict[int, dict]) -> dict:
  boxes = {}
  for image_id, r in records.items():
    if protocol.detection:  # crowd regions: ignored, neither matched nor missed
      boxes[image_id] = (r["boxes"], r["labels"], r["iscrowd"])
    else:
      named = r["box_phrase"] >= 0
      boxes[image_id] = (r["boxes"][named], r["box_phrase"][named] + 1, r["iscrowd"][named])
  images = [dict(id=i, height=int(r["image_hw"][0]), width=int(r["image_hw"][1])) for i, r in records.items()]
  return coco_ground_truth(images, boxes, protocol.category_ids)


def score(protocol: Protocol, records: dict[int, dict], detections: dict[int, dict]) -> dict[str, float]:
  """COCO metrics of per-image detections ({image_id: boxes/scores/category_ids}) under `protocol`."""
  results = [r for image_id, det in detections.items() for r in coco_results(image_id, det)]
  return coco_metrics(ground_truth(protocol, records), results)


def run(predict, config, tokenizer, mesh, protocols: Sequence[Protocol], records: dict) -> tuple[dict, dict]:
  """Runs `protocols` with `predict(global batch) -> detections`. Returns (metrics by protocol, detections by
  protocol {image_id: detections}), each image's chunks merged."""
  metrics, detections = {}, {}
  for protocol in protocols:
    per_image: dict[int, list] = {}
    for prompter in protocol.prompters:
      for image_id, det in predict_split(predict, config, tokenizer, mesh, prompter=prompter):
        per_image.setdefault(image_id, []).append(det)
    detections[protocol.name] = {i: merge_top(d, config.eval.detections_per_img) for i, d in per_image.items()}
    metrics[protocol.name] = score(protocol, records, detections[protocol.name])
  return metrics, detections


def detect_categories(job, *, categories_per_prompt: int, top_k: int | None) -> dict[int, dict]:
  """Detections of every category of `job`'s dataset per image, GLIP's way for long category lists: prompts of
  at most `categories_per_prompt` categories (and what the query length holds), each image's detections of all
  prompts merged, best `top_k` kept; `category_ids` are the annotation file's own ids."""
  dataset = job.dataset()
  prompters = category_prompters(dataset.category_names, job.tokenizer, job.config.model.max_query_len,
                                 min(categories_per_prompt, job.config.data.max_phrases))
  own_ids = np.array([0] + [c.id for c in dataset.categories], np.int64)
  per_image: dict[int, list] = {}
  for n, prompter in enumerate(prompters, start=1):
    title = f"{dataset.name} prompt {n}/{len(prompters)}" if job.progress else ""
    for image_id, det in predict_split(job.predict, job.config, job.tokenizer, job.mesh, prompter=prompter,
                                       split=job.split, progress=title):
      per_image.setdefault(image_id, []).append(det)
  merged = {i: merge_top(d, top_k) for i, d in per_image.items()}
  return {i: dict(d, category_ids=own_ids[d["category_ids"]]) for i, d in merged.items()}


def merge_top(dets: list[dict], k: int | None) -> dict:
  """Detections of one image from several prompt chunks: concatenated, best `k` by score (GLIP's merge; None:
  all of them, best first)."""
  merged = {key: np.concatenate([d[key] for d in dets]) for key in dets[0]}
  order = np.argsort(-merged["scores"], kind="stable")[:k]
  return {key: v[order] for key, v in merged.items()}


def coco_results(image_id: int, det: dict) -> list[dict]:
  """COCO results entries: xywh with GLIP's "+1" width convention, as maskrcnn_benchmark's evaluation writes."""
  return [dict(image_id=image_id, category_id=int(c), score=float(s),
               bbox=[float(b[0]), float(b[1]), float(b[2] - b[0] + 1), float(b[3] - b[1] + 1)])
          for b, s, c in zip(det["boxes"], det["scores"], det["category_ids"])]


def coco_ground_truth(images: list[dict], boxes_by_image: dict, category_ids) -> dict:
  """A COCO ground-truth dict from xyxy (pixel-inclusive) boxes per image: {image_id: (boxes, category_ids[,
  iscrowd])}."""
  annotations = []
  for image_id, (boxes, cats, *crowd) in boxes_by_image.items():
    crowd = crowd[0] if crowd else np.zeros(len(cats), bool)
    for (x1, y1, x2, y2), c, is_crowd in zip(np.asarray(boxes).reshape(-1, 4), cats, crowd):
      w, h = float(x2 - x1 + 1), float(y2 - y1 + 1)
      annotations.append(dict(id=len(annotations) + 1, image_id=int(image_id), category_id=int(c),
                              iscrowd=int(bool(is_crowd)), bbox=[float(x1), float(y1), w, h], area=w * h))
  return dict(images=images, annotations=annotations, categories=[dict(id=int(c)) for c in category_ids])


def coco_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
  """COCO bbox AP of `results` against the in-memory ground truth `gt` (pycocotools, quietly)."""
  if not results or not gt["annotations"]:
    return {k: 0.0 for k in METRIC_NAMES}
  with contextlib.redirect_stdout(io.StringIO()) as log:
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  logging.info("COCO eval:\n%s", log.getvalue())
  return {k: float(max(v, 0.0)) for k, v in zip(METRIC_NAMES, ev.stats[:6])}


def flatten(nested: dict, prefix: str = "") -> dict[str, float]:
  """{'detection': {'AP': .., 'text_blind': {...}}} -> {'detection/AP': .., 'detection/text_blind/AP': ..}."""
  out = {}
  for k, v in nested.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def draw(image: np.ndarray, det: dict, names: dict, score_thresh: float):
  """A picture of one image's detections above `score_thresh`, each object with its best label, named by
  `names[category_id]`."""
  keep = np.nonzero(det["scores"] >= score_thresh)[0]
  keep = keep[visualize.best_per_object(det["boxes"][keep], det["scores"][keep])]
  cats = det["category_ids"][keep]
  return visualize.draw_detections(image, det["boxes"][keep], [names.get(int(c), str(c)) for c in cats],
                                   det["scores"][keep], cats, scale=max(1, 384 // max(image.shape[:2])))
