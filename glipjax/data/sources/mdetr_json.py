"""MDETR-style grounding json (Flickr30k Entities, GoldG "mixed" VG/COCO, RefCOCO/+/g): one image entry per
caption (`caption`, `file_name`, `original_img_id` or `original_id`, `sentence_id`), its boxes in
`annotations` with `tokens_positive` character spans into the caption; one record per caption.

Boxes naming the same spans form one phrase. Spans beyond the caption are clipped or dropped, spans cutting a
word are widened to whole words; a box left without any span is dropped; all counted.
"""
from __future__ import annotations

import collections
import pathlib

from glipjax.data import records
from glipjax.data.sources import PrepareError, Stats, load_json
from glipjax.data.sources import common


def read(annotations: str | pathlib.Path, images: str | pathlib.Path, *, label_map=None, stats: Stats):
  del label_map  # grounding data has no category vocabulary
  path, images = pathlib.Path(annotations), pathlib.Path(images)
  data = load_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise PrepareError(f"{path}: not an MDETR-format file (no 'images' list)")
  entries: dict[int, dict] = {}
  for i, im in enumerate(data["images"]):
    if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
      raise PrepareError(f"{path}: images[{i}] needs 'id' and 'file_name'")
    iid = int(im["id"])
    if iid in entries:
      stats.count("captions skipped: duplicate image id (later entry)", where=f"{path}: image id {iid}")
      continue
    if not str(im.get("caption", "")).strip():
      stats.count("captions skipped: empty caption", where=f"{path}: image id {iid}")
      continue
    entries[iid] = im
  by_image = collections.defaultdict(list)
  for i, a in enumerate(data.get("annotations", [])):
    if not isinstance(a, dict) or "image_id" not in a:
      raise PrepareError(f"{path}: annotations[{i}] has no 'image_id'")
    if int(a["image_id"]) in entries:
      by_image[int(a["image_id"])].append(a)
    else:
      stats.count("boxes dropped: annotation for an unknown or skipped image id",
                  where=f"{path}: annotation {a.get('id', i)}")

  def stored():
    for (iid, im), img in common.read_images(entries.items(), lambda it: images / str(it[1]["file_name"]), stats):
      where = f"{path}: image id {iid}"
      caption = str(im["caption"])
      ann = by_image.get(iid, [])
      boxes, kept = common.fit_boxes([common.xywh_box(a.get("bbox")) for a in ann], img.height, img.width,
                                     stats, where)
      box_spans = []
      for k in kept:
        spans = [common.fit_span(s, caption, stats, where) for s in ann[k].get("tokens_positive", [])]
        box_spans.append([s for s in spans if s is not None])
        if not box_spans[-1]:
          stats.count("boxes dropped: no valid tokens_positive span", where=where)
      good = [i for i, s in enumerate(box_spans) if s]
      phrase_spans, span_phrase, box_phrase = common.group_phrases([box_spans[i] for i in good])
      original = im.get("original_img_id", im.get("original_id", -1))
      yield records.stored(
          image=img.data, image_id=iid, original_image_id=int(original) if original is not None else -1,
          sentence_id=int(im.get("sentence_id", -1)) if im.get("sentence_id") is not None else -1,
          file_name=str(im["file_name"]), caption=caption, boxes=boxes[good], box_phrase=box_phrase,
          iscrowd=[bool(ann[kept[i]].get("iscrowd", 0)) for i in good],
          phrase_spans=phrase_spans, span_phrase=span_phrase)

  return [], stored()  # grounding data: the captions are the prompts, no category vocabulary
