"""Evaluation: jitted model + post-processing over the validation split, COCO AP with pycocotools.

  python -m glipjax.evaluate --workdir runs/quickstart     # the newest checkpoint of a training run

For grounding data the COCO "category" of a box is its phrase index within the image's prompt (1-based), which
is also the label post-processing gives each detection, so AP measures whether boxes land on the right phrase.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pathlib

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from jax.experimental import multihost_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import glipjax  # noqa: F401
from glipjax import sharding, visualize
from glipjax.data import pipeline, transforms
from glipjax.ops.postprocess import postprocess, to_coco_results

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def make_predict_fn(graphdef, anchors, level_counts, eval_cfg):
  def predict(params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
    return postprocess(out, anchors, level_counts, batch["phrase_map"], batch["phrase_mask"], batch["image_hw"],
                       pre_nms_thresh=eval_cfg.pre_nms_thresh, pre_nms_top_n=eval_cfg.pre_nms_top_n,
                       nms_thresh=eval_cfg.nms_thresh, detections_per_img=eval_cfg.detections_per_img)
  return jax.jit(predict)


def coco_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
  """COCO bbox AP of `results` against the in-memory ground truth `gt` (pycocotools, quietly)."""
  if not results:
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


def _denormalize(image: np.ndarray, hw) -> np.ndarray:
  bgr = image[:hw[0], :hw[1]] * transforms.PIXEL_STD_BGR + transforms.PIXEL_MEAN_BGR
  return np.clip(bgr[..., ::-1], 0, 255).astype(np.uint8)


def evaluate(config, graphdef, params, rest, tokenizer, anchors, level_counts, *, mesh, workdir=None) -> dict:
  """COCO metrics on the validation split; with `workdir`, also writes pictures and `predictions.json`."""
  predict = make_predict_fn(graphdef, anchors, level_counts, config.eval)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.batch_axes)
  data = pipeline.make_pipeline(config.data, "validation", tokenizer, global_batch_size=config.eval.global_batch_size,
                                train=False, seed=config.seed, max_query_len=config.model.max_query_len)
  images, annotations, results, pictures = [], [], [], []
  for local in data:
    valid = local.pop("valid")
    dets = predict(params, rest, sharding.global_batch(local, batch_sharding))
    dets = jax.tree.map(np.asarray, multihost_utils.process_allgather(dets, tiled=True)
                        if jax.process_count() > 1 else dets)
    scales = local["orig_hw"] / local["image_hw"]
    for i in np.nonzero(valid)[0]:
      image_id = int(local["image_id"][i])
      images.append(dict(id=image_id, height=int(local["orig_hw"][i][0]), width=int(local["orig_hw"][i][1])))
      sy, sx = scales[i]
      for box, label in zip(local["boxes"][i][local["box_mask"][i]], local["box_labels"][i][local["box_mask"][i]]):
        x1, y1, x2, y2 = box
        w, h = (x2 - x1 + 1) * sx, (y2 - y1 + 1) * sy
        annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(label), iscrowd=0,
                                bbox=[float(x1 * sx), float(y1 * sy), float(w), float(h)], area=float(w * h)))
      one = {k: v[i:i + 1] for k, v in dets.items()}
      results += to_coco_results(one, [image_id], scales[i:i + 1])
      if workdir is not None and len(pictures) < config.eval.num_pictures:
        pictures.append((image_id, _denormalize(local["image"][i], local["image_hw"][i]), one,
                         local["input_ids"][i]))
  gt = dict(images=images, annotations=annotations,
            categories=[dict(id=i) for i in range(1, config.data.max_phrases + 1)])
  metrics = coco_metrics(gt, results)
  if workdir is not None and jax.process_index() == 0:
    _write_outputs(pathlib.Path(workdir), config, pictures, results)
  return metrics


def _write_outputs(workdir: pathlib.Path, config, pictures, results) -> None:
  (workdir / "predictions.json").write_text(json.dumps(results))
  source = pipeline.open_source(config.data, "validation")
  wanted = {p[0] for p in pictures}
  phrases = {}
  for j in range(len(source)):  # phrase strings for the drawn images
    rec = pipeline._decode(source[j])
    if rec["image_id"] in wanted:
      phrases[rec["image_id"]] = [rec["caption"][a:b] for a, b in rec["phrase_spans"]]
  out_dir = workdir / "pictures"
  out_dir.mkdir(exist_ok=True)
  thresh = config.eval.picture_score_thresh
  for image_id, image, det, _ in pictures:
    keep = det["valid"][0] & (det["scores"][0] >= thresh)
    names = phrases.get(image_id, [])
    labels = [names[l - 1] if 0 < l <= len(names) else str(l) for l in det["labels"][0][keep]]
    pic = visualize.draw_detections(image, det["boxes"][0][keep], labels, det["scores"][0][keep],
                                    det["labels"][0][keep], scale=max(1, 384 // max(image.shape[:2])))
    pic.save(out_dir / f"val_{image_id}.png")


def main(argv):
  del argv
  from glipjax import config_utils, distributed, train
  distributed.initialize_from_flags()  # before any device use
  workdir = pathlib.Path(flags.FLAGS.workdir)
  config = config_utils.load_workdir_config(workdir)
  s = train.build(config)
  tokenizer = train.prepare_tokenizer(config, workdir)
  with jax.set_mesh(s.mesh):
    step, params, rest = train.restore_for_inference(s, workdir)
    metrics = evaluate(config, s.graphdef, params, rest, tokenizer, s.anchors, s.level_counts, mesh=s.mesh,
                       workdir=workdir)
  print(json.dumps(dict(metrics, step=int(step)), indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "a training workdir (config.json + checkpoints)")
  flags.mark_flag_as_required("workdir")
  from glipjax import distributed
  distributed.define_flags()
  app.run(main)
