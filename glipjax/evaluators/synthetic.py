"""Evaluation of the embedded default (`synthetic_grounding`): does the model find what the prompt names?

- `detection`: one prompt naming all 15 colour x shape kinds (chunked if it does not fit the text length);
  every object is ground truth under its kind; COCO AP over the kinds. A detector that ignores the words cannot
  tell "red circle" from "blue circle" or "red square" and scores low. `detection_text_blind` is the control:
  the same prompt with every name replaced by one constant word, the same model and the same scoring.
- `grounding`: each image's caption, its phrases as the categories (COCO AP per phrase index, as GLIP scores
  grounding data), ground truth the objects the caption names. Beside it, its text sensitivity: the same AP
  with each phrase's head colour swapped for another (`grounding_colour_swapped`) and with each phrase naming a
  kind absent from the image (`grounding_absent_kinds`), against the *original* ground truth. A model that reads
  the text loses most of its AP there; a text-blind one keeps it.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Sequence

import jax
import numpy as np

from glipjax.data import pipeline, prompting, records as data_records, synthetic, transforms
from glipjax.evaluators import common

PROTOCOLS = ("detection", "detection_text_blind", "grounding", "grounding_colour_swapped", "grounding_absent_kinds")
BLIND_WORD = "shape"  # the constant phrase of the text-blind control (its letters all occur in the captions)
_REWRITE_SEED = 20221  # caption rewrites are seeded by image id: the same prompts for every checkpoint


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  prompters: Sequence[Callable]  # one per prompt chunk: record -> prompting.Prompt
  category_ids: Sequence[int]
  detection: bool                # ground truth: every object under its kind (else the caption's phrases)


def protocols(tokenizer, max_query_len: int, max_phrases: int) -> dict[str, Protocol]:
  names = synthetic.category_names()
  chunks = prompting.chunks_that_fit(names, tokenizer, max_query_len)
  chunks = [c[i:i + max_phrases] for c in chunks for i in range(0, len(c), max_phrases)]

  def detection(blind: bool):
    def make(chunk):
      ids, shown = [i + 1 for i in chunk], [BLIND_WORD if blind else names[i] for i in chunk]
      return lambda record: prompting.category_prompt(record["labels"], ids, shown)
    return [make(c) for c in chunks]

  def rewritten(mode: str):
    def prompter(record):
      rng = np.random.default_rng([_REWRITE_SEED, record["image_id"]])
      caption, spans, _ = synthetic.rewrite_caption(record["caption"], record["phrase_spans"], record["labels"],
                                                    mode, rng)
      return dataclasses.replace(prompting.caption_prompt(record), caption=caption, spans=spans)
    return [prompter]

  kinds, phrases = range(1, len(names) + 1), range(1, max_phrases + 1)
  return {
      "detection": Protocol("detection", detection(False), kinds, True),
      "detection_text_blind": Protocol("detection_text_blind", detection(True), kinds, True),
      "grounding": Protocol("grounding", [prompting.caption_prompt], phrases, False),
      "grounding_colour_swapped": Protocol("grounding_colour_swapped", rewritten("colour_swapped"), phrases, False),
      "grounding_absent_kinds": Protocol("grounding_absent_kinds", rewritten("absent_kinds"), phrases, False),
  }


def load_records(data_cfg, split: str = "validation") -> dict[int, dict]:
  """Canonical records by image id, boxes validated as the pipeline validates them: the ground truth."""
  source = pipeline.eval_dataset(data_cfg, split).source
  records = {}
  for i in range(len(source)):
    r = data_records.decode(source[i])
    r["boxes"], (r["labels"], r["box_phrase"]), _ = transforms.sanitize_boxes(
        r["boxes"], r["image"].shape[:2], r["labels"], r["box_phrase"])
    records[r["image_id"]] = r
  return records


def ground_truth(protocol: Protocol, records: dict[int, dict]) -> dict:
  boxes = {}
  for image_id, r in records.items():
    if protocol.detection:
      boxes[image_id] = (r["boxes"], r["labels"])
    else:
      named = r["box_phrase"] >= 0
      boxes[image_id] = (r["boxes"][named], r["box_phrase"][named] + 1)
  images = [dict(id=i, height=int(r["image"].shape[0]), width=int(r["image"].shape[1])) for i, r in records.items()]
  return common.coco_ground_truth(images, boxes, protocol.category_ids)


def score(protocol: Protocol, records: dict[int, dict], detections: dict[int, dict]) -> dict[str, float]:
  """COCO metrics of per-image detections ({image_id: boxes/scores/category_ids}) under `protocol`."""
  results = [r for image_id, det in detections.items() for r in common.coco_results(image_id, det)]
  return common.coco_metrics(ground_truth(protocol, records), results)


def run(predict, config, tokenizer, mesh, *, records=None, names=PROTOCOLS) -> tuple[dict, dict]:
  """Runs the protocols `names` with `predict(global batch) -> detections`. Returns (metrics by protocol,
  detections by protocol {image_id: detections})."""
  records = records if records is not None else load_records(config.data)
  table = protocols(tokenizer, config.model.max_query_len, config.data.max_phrases)
  metrics, detections = {}, {}
  for name in names:
    protocol = table[name]
    per_image: dict[int, list] = {}
    for prompter in protocol.prompters:
      for image_id, det in common.predict_split(predict, config, tokenizer, mesh, prompter=prompter):
        per_image.setdefault(image_id, []).append(det)
    detections[name] = {i: common.merge_top(d, config.eval.detections_per_img) for i, d in per_image.items()}
    metrics[name] = score(protocol, records, detections[name])
  return metrics, detections


def nest(metrics: dict) -> dict:
  """{'detection': {...}, 'detection_text_blind': {...}, 'grounding': ...} -> the report's shape: text-blind
  under detection, the caption rewrites under grounding."""
  out = {}
  if "detection" in metrics:
    out["detection"] = dict(metrics["detection"])
    if "detection_text_blind" in metrics:
      out["detection"]["text_blind"] = metrics["detection_text_blind"]
  if "grounding" in metrics:
    out["grounding"] = dict(metrics["grounding"])
    for mode in ("colour_swapped", "absent_kinds"):
      if f"grounding_{mode}" in metrics:
        out["grounding"][mode] = metrics[f"grounding_{mode}"]
  return out


def evaluate(predict, config, tokenizer, mesh, *, workdir: str | pathlib.Path | None = None) -> dict:
  """Every protocol, nested (see `nest`); with `workdir`, also predictions.json (the detection protocol's COCO
  results) and pictures of the detection and grounding predictions."""
  records = load_records(config.data)
  metrics, detections = run(predict, config, tokenizer, mesh, records=records)
  if workdir is not None and jax.process_index() == 0:
    write_outputs(pathlib.Path(workdir), config, records, detections)
  return nest(metrics)


def write_outputs(workdir: pathlib.Path, config, records: dict, detections: dict) -> None:
  (workdir / "predictions.json").write_text(json.dumps(
      [r for i, det in detections["detection"].items() for r in common.coco_results(i, det)]))
  out = workdir / "pictures"
  out.mkdir(exist_ok=True)
  kinds = dict(enumerate(synthetic.category_names(), start=1))
  thresh = config.eval.picture_score_thresh
  drawn = [i for i in sorted(records) if i in detections["detection"] and i in detections["grounding"]]
  for image_id in drawn[:config.eval.num_pictures]:
    r = records[image_id]
    common.draw(r["image"], detections["detection"][image_id], kinds, thresh).save(
        out / f"detection_{image_id}.png")
    phrases = {i + 1: r["caption"][a:b] for i, (a, b) in enumerate(r["phrase_spans"])}
    common.draw(r["image"], detections["grounding"][image_id], phrases, thresh).save(
        out / f"grounding_{image_id}.png")
