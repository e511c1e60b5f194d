"""Evaluation of a dataset prepared with `glipjax.data.prepare`, ground truth from its records (boxes validated
as the pipeline validates them), COCO AP with pycocotools:

- detection datasets (`coco`, `lvis` formats): a prompt naming every category, chunked to the query length and
  `data.max_phrases` (GLIP's zero-shot detection protocol); crowd regions are ignored, neither matched nor
  missed. Reported under `detection`; `predictions.json` is a COCO results file in the dataset's own category
  ids and original image pixels.
- grounding datasets (`mdetr`, `odvg`): each image's caption, its phrases as the categories (COCO AP per phrase
  index, as GLIP scores grounding data). Reported under `grounding`.

This is the in-training evaluation of real data; the papers' protocols on the official annotation files (LVIS
federated AP, ODinW means, Flickr30k recall, RefCOCO accuracy) are separate evaluators.
"""
from __future__ import annotations

import json
import pathlib

import jax

from glipjax.data import pipeline, prompting, records as data_records
from glipjax.evaluators import common


def protocol(dataset, tokenizer, config) -> common.Protocol:
  if dataset.kind == "detection":
    return common.Protocol("detection", common.category_prompters(
        dataset.category_names, tokenizer, config.model.max_query_len, config.data.max_phrases),
        range(1, len(dataset.categories) + 1), True)
  return common.Protocol("grounding", [prompting.caption_prompt], range(1, config.data.max_phrases + 1), False)


def evaluate(predict, config, tokenizer, mesh, *, workdir: str | pathlib.Path | None = None) -> dict:
  """{protocol name: COCO metrics}; with `workdir`, also predictions.json and a few pictures."""
  dataset = pipeline.eval_dataset(config.data)
  records = common.load_records(config.data)
  p = protocol(dataset, tokenizer, config)
  metrics, detections = common.run(predict, config, tokenizer, mesh, [p], records)
  if workdir is not None and jax.process_index() == 0:
    write_outputs(pathlib.Path(workdir), config, dataset, records, p, detections[p.name])
  return metrics


def write_outputs(workdir: pathlib.Path, config, dataset, records: dict, p: common.Protocol,
                  detections: dict) -> None:
  own_ids = {i + 1: c.id for i, c in enumerate(dataset.categories)}  # label 1..K -> the annotation file's id
  results = []
  for image_id, det in detections.items():
    for r in common.coco_results(image_id, det):
      if p.detection:
        r["category_id"] = own_ids[r["category_id"]]
      results.append(r)
  (workdir / "predictions.json").write_text(json.dumps(results))
  out = workdir / "pictures"
  out.mkdir(exist_ok=True)
  for image_id in sorted(detections)[:config.eval.num_pictures]:
    r = records[image_id]
    if p.detection:
      names = dict(enumerate(dataset.category_names, start=1))
    else:
      spans = data_records.phrase_span_lists(r["phrase_spans"], r["span_phrase"])
      names = {i + 1: " ".join(r["caption"][a:b] for a, b in s) for i, s in enumerate(spans)}
    common.draw(common.record_image(config.data, r), detections[image_id], names,
                config.eval.picture_score_thresh).save(out / f"{p.name}_{image_id}.png")
