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

import jax
import numpy as np

from glipjax.data import prompting, synthetic
from glipjax.evaluators import common

PROTOCOLS = ("detection", "detection_text_blind", "grounding", "grounding_colour_swapped", "grounding_absent_kinds")
BLIND_WORD = "shape"  # the constant phrase of the text-blind control (its letters all occur in the captions)
_REWRITE_SEED = 20221  # caption rewrites are seeded by image id: the same prompts for every checkpoint


def protocols(tokenizer, max_query_len: int, max_phrases: int) -> dict[str, common.Protocol]:
  names = synthetic.category_names()
  detection = lambda shown=None: common.category_prompters(names, tokenizer, max_query_len, max_phrases, shown)

  def rewritten(mode: str):
    def prompter(record):
      rng = np.random.default_rng([_REWRITE_SEED, record["image_id"]])
      caption, spans, _ = synthetic.rewrite_caption(record["caption"], record["phrase_spans"], record["labels"],
                                                    mode, rng)
      return dataclasses.replace(prompting.caption_prompt(record), caption=caption, spans=spans)
    return [prompter]

  kinds, phrases = range(1, len(names) + 1), range(1, max_phrases + 1)
  return {
      "detection": common.Protocol("detection", detection(), kinds, True),
      "detection_text_blind": common.Protocol("detection_text_blind", detection(lambda _: BLIND_WORD), kinds, True),
      "grounding": common.Protocol("grounding", [prompting.caption_prompt], phrases, False),
      "grounding_colour_swapped": common.Protocol("grounding_colour_swapped", rewritten("colour_swapped"), phrases,
                                                  False),
      "grounding_absent_kinds": common.Protocol("grounding_absent_kinds", rewritten("absent_kinds"), phrases,
                                                False),
  }


def run(predict, config, tokenizer, mesh, *, records=None, names=PROTOCOLS) -> tuple[dict, dict]:
  """Runs the protocols `names` with `predict(global batch) -> detections`. Returns (metrics by protocol,
  detections by protocol {image_id: detections})."""
  records = records if records is not None else common.load_records(config.data)
  table = protocols(tokenizer, config.model.max_query_len, config.data.max_phrases)
  return common.run(predict, config, tokenizer, mesh, [table[n] for n in names], records)


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
  records = common.load_records(config.data)
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
    image = common.record_image(config.data, r)
    common.draw(image, detections["detection"][image_id], kinds, thresh).save(out / f"detection_{image_id}.png")
    phrases = {i + 1: r["caption"][a:b] for i, (a, b) in enumerate(r["phrase_spans"])}
    common.draw(image, detections["grounding"][image_id], phrases, thresh).save(
        out / f"grounding_{image_id}.png")
