"""COCO-format detection json (COCO 2017, Objects365, ODinW / Roboflow exports, custom sets) and LVIS v1.

- Category ids may be anything; records label boxes 1..K in the order of the sorted ids, and the dataset's
  metadata keeps each original id (the evaluator maps back to it). Names are cleaned as GLIP's prompts write
  them; a `label_map` {id: name} overrides the file's names.
- A Roboflow export's dummy category 0 (the super-category of all others, with no boxes) is dropped.
- `iscrowd` boxes are kept, flagged: ignore regions, never positives.
- LVIS: images name their file by `coco_url` (found as `<images>/<split dir>/<file>` or `<images>/<file>`);
  per-image `neg_category_ids` and `not_exhaustive_category_ids` and each category's `frequency` are kept.
"""
from __future__ import annotations

import collections
import pathlib

from glipjax.data import records
from glipjax.data.sources import Category, PrepareError, Stats, load_json
from glipjax.data.sources import common
from glipjax.text.prompts import clean_name


def _categories(data: dict, path: pathlib.Path, label_map, used: set, stats: Stats) -> list[Category]:
  raw = data.get("categories")
  if not isinstance(raw, list) or not raw:
    raise PrepareError(f"{path}: no 'categories' list")
  cats, seen = [], set()
  for i, c in enumerate(raw):
    if not isinstance(c, dict) or "id" not in c:
      raise PrepareError(f"{path}: categories[{i}] has no 'id'")
    cid = int(c["id"])
    if cid in seen:
      raise PrepareError(f"{path}: category id {cid} appears twice")
    seen.add(cid)
    name = label_map.get(cid, "") if label_map and cid in label_map else str(c.get("name", ""))
    if not clean_name(name):
      raise PrepareError(f"{path}: category id {cid} has an empty name {name!r} (give one with --label_map)")
    cats.append((cid, clean_name(name), str(c.get("frequency", "")), str(c.get("supercategory", ""))))
  supers = {s for cid, _, _, s in cats if cid != 0}
  dummy = [c for c in cats if c[0] == 0 and 0 not in used and c[1] in {clean_name(s) for s in supers}]
  if dummy:
    stats.count("categories dropped: Roboflow dummy category 0", where=dummy[0][1])
    cats = [c for c in cats if c[0] != 0]
  return [Category(cid, name, freq) for cid, name, freq, _ in sorted(cats)]


def _image_path(entry: dict, images: pathlib.Path) -> pathlib.Path:
  if entry.get("file_name"):
    return images / str(entry["file_name"])
  url = str(entry.get("coco_url", ""))
  parts = [p for p in url.split("/") if p]
  if len(parts) >= 2 and (images / parts[-2] / parts[-1]).exists():
    return images / parts[-2] / parts[-1]
  return images / (parts[-1] if parts else f"<image {entry.get('id')} has no file_name or coco_url>")


def read(annotations: str | pathlib.Path, images: str | pathlib.Path, *, label_map=None, stats: Stats,
         lvis: bool | None = None):
  """(categories, iterator of stored records) of a COCO / LVIS json."""
  path, images = pathlib.Path(annotations), pathlib.Path(images)
  data = load_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise PrepareError(f"{path}: not a COCO-format file (no 'images' list)")
  anns = data.get("annotations", [])
  if not isinstance(anns, list):
    raise PrepareError(f"{path}: 'annotations' is not a list")
  used = {a.get("category_id") for a in anns if isinstance(a, dict)}
  cats = _categories(data, path, label_map, used, stats)
  index = {c.id: i + 1 for i, c in enumerate(cats)}
  lvis = any(c.frequency for c in cats) if lvis is None else lvis

  entries: dict[int, dict] = {}
  for i, im in enumerate(data["images"]):
    if not isinstance(im, dict) or "id" not in im:
      raise PrepareError(f"{path}: images[{i}] has no 'id'")
    iid = int(im["id"])
    if iid in entries:
      stats.count("images skipped: duplicate image id (later entry)", where=f"{path}: image id {iid}")
      continue
    entries[iid] = im
  by_image = collections.defaultdict(list)
  for i, a in enumerate(anns):
    if not isinstance(a, dict) or "image_id" not in a:
      raise PrepareError(f"{path}: annotations[{i}] has no 'image_id'")
    if int(a["image_id"]) not in entries:
      stats.count("boxes dropped: annotation for an unknown image id", where=f"{path}: annotation {a.get('id', i)}")
      continue
    if a.get("category_id") not in index:
      stats.count("boxes dropped: unknown category id", where=f"{path}: annotation {a.get('id', i)}")
      continue
    by_image[int(a["image_id"])].append(a)

  def expected_hw(item):
    im = item[1]
    return (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None

  def stored():
    pairs = ((iid, im) for iid, im in entries.items())
    for (iid, im), img in common.read_images(pairs, lambda it: _image_path(it[1], images), stats,
                                             expected_hw=expected_hw):
      where = f"{path}: image id {iid}"
      hw = expected_hw((iid, im))
      if hw is not None and hw != (img.height, img.width) and hw != (img.width, img.height):
        stats.count("images whose pixels differ in size from the json's height/width", where=where)
      ann = by_image.get(iid, [])
      boxes, kept = common.fit_boxes([common.xywh_box(a.get("bbox")) for a in ann], img.height, img.width,
                                     stats, where)
      ann = [ann[k] for k in kept]
      if not ann:
        stats.count("images without boxes (kept for evaluation)", where=where)
      to_index = lambda ids: [index[c] for c in ids if c in index]
      yield records.stored(
          image=img.data, image_id=iid, original_image_id=iid, boxes=boxes,
          labels=[index[a["category_id"]] for a in ann], iscrowd=[bool(a.get("iscrowd", 0)) for a in ann],
          file_name=str(_image_path(im, images).relative_to(images)),
          neg_category_ids=to_index(im.get("neg_category_ids", [])) if lvis else (),
          not_exhaustive_category_ids=to_index(im.get("not_exhaustive_category_ids", [])) if lvis else ())

  return cats, stored()

