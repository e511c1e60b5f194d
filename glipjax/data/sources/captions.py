"""Image-caption jsonl without boxes (web pairs to pseudo-label with a teacher GLIP): one JSON object per line
with the image path (`image` or `file_name`, relative to the images folder) and its `caption`."""
from __future__ import annotations

import pathlib

from glipjax.data import records
from glipjax.data.sources import PrepareError, Stats, iter_jsonl
from glipjax.data.sources import common


def read(annotations: str | pathlib.Path, images: str | pathlib.Path, *, label_map=None, stats: Stats):
  del label_map
  path, images = pathlib.Path(annotations), pathlib.Path(images)

  def lines():
    for n, obj in iter_jsonl(path):
      name = obj.get("image", obj.get("file_name"))
      if not name:
        raise PrepareError(f"{path}: line {n} has no 'image' (or 'file_name')")
      if not str(obj.get("caption", "")).strip():
        stats.count("captions skipped: empty caption", where=f"{path}: line {n}")
        continue
      yield n, obj

  def stored():
    for (n, obj), img in common.read_images(lines(), lambda it: images / str(it[1].get("image", it[1].get(
        "file_name"))), stats):
      yield records.stored(image=img.data, image_id=n, file_name=str(obj.get("image", obj.get("file_name"))),
                           caption=str(obj["caption"]), boxes=[])

  return [], stored()
