"""ODVG jsonl, the format Grounding-DINO-family trainers use: one image per line (`filename`, `height`,
`width`) with either `detection.instances` (`bbox` [x1, y1, x2, y2], integer `label`, `category`) or
`grounding` (`caption`, `regions` with `bbox`, `phrase` and `tokens_positive`).

Detection labels are named by the `label_map` ({"0": "person", ...}); without one, by the instances' own
`category` strings. Grounding regions with the same spans form one phrase; a region without valid spans is
located by its `phrase` in the caption, else dropped (counted).
"""
from __future__ import annotations

import pathlib

from glipjax.data import records
from glipjax.data.sources import Category, PrepareError, Stats, iter_jsonl
from glipjax.data.sources import common
from glipjax.text.prompts import clean_name


def _categories(path: pathlib.Path, label_map) -> list[Category]:
  if label_map is not None:
    names = dict(label_map)
  else:
    names = {}
    for n, obj in iter_jsonl(path):
      for inst in (obj.get("detection") or {}).get("instances", []):
        if "label" in inst and inst.get("category"):
          names.setdefault(int(inst["label"]), str(inst["category"]))
  for cid, name in names.items():
    if not clean_name(name):
      raise PrepareError(f"{path}: label {cid} has an empty name {name!r} (give one with --label_map)")
  return [Category(cid, clean_name(names[cid])) for cid in sorted(names)]


def read(annotations: str | pathlib.Path, images: str | pathlib.Path, *, label_map=None, stats: Stats):
  path, images = pathlib.Path(annotations), pathlib.Path(images)
  cats = _categories(path, label_map)
  index = {c.id: i + 1 for i, c in enumerate(cats)}

  def lines():
    for n, obj in iter_jsonl(path):
      if not obj.get("filename"):
        raise PrepareError(f"{path}: line {n} has no 'filename'")
      if "detection" not in obj and "grounding" not in obj:
        raise PrepareError(f"{path}: line {n} has neither 'detection' nor 'grounding'")
      yield n, obj

  def expected_hw(item):
    obj = item[1]
    return (int(obj["height"]), int(obj["width"])) if "height" in obj and "width" in obj else None

  def stored():
    for (n, obj), img in common.read_images(lines(), lambda it: images / str(it[1]["filename"]), stats,
                                            expected_hw=expected_hw):
      where = f"{path}: line {n}"
      if "grounding" in obj:
        g = obj["grounding"] or {}
        caption = str(g.get("caption", ""))
        if not caption.strip():
          stats.count("captions skipped: empty caption", where=where)
          continue
        regions = list(g.get("regions", []))
        boxes, kept = common.fit_boxes([common.xyxy_box(r.get("bbox")) for r in regions], img.height, img.width,
                                       stats, where)
        box_spans = []
        for k in kept:
          r = regions[k]
          spans = [common.fit_span(s, caption, stats, where) for s in r.get("tokens_positive", [])]
          spans = [s for s in spans if s is not None]
          phrase = str(r.get("phrase", "")).strip()
          if not spans and phrase and phrase in caption:
            spans = [(caption.index(phrase), caption.index(phrase) + len(phrase))]
            stats.count("spans located from the region's phrase", where=where)
          if not spans:
            stats.count("boxes dropped: no valid tokens_positive span", where=where)
          box_spans.append(spans)
        good = [i for i, s in enumerate(box_spans) if s]
        phrase_spans, span_phrase, box_phrase = common.group_phrases([box_spans[i] for i in good])
        yield records.stored(image=img.data, image_id=n, file_name=str(obj["filename"]), caption=caption,
                             boxes=boxes[good], box_phrase=box_phrase, phrase_spans=phrase_spans,
                             span_phrase=span_phrase)
      else:
        inst = list((obj["detection"] or {}).get("instances", []))
        known = []
        for i in inst:
          if int(i.get("label", -1)) in index:
            known.append(i)
          else:
            stats.count("boxes dropped: label not in the label map", where=where)
        boxes, kept = common.fit_boxes([common.xyxy_box(i.get("bbox")) for i in known], img.height, img.width,
                                       stats, where)
        if not len(kept):
          stats.count("images without boxes (kept for evaluation)", where=where)
        yield records.stored(image=img.data, image_id=n, file_name=str(obj["filename"]), boxes=boxes,
                             labels=[index[int(known[k]["label"])] for k in kept],
                             iscrowd=[bool(known[k].get("iscrowd", 0)) for k in kept])

  return cats, stored()
