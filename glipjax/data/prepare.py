"""Prepare a dataset from local files: annotations + images -> a TFDS dataset (ArrayRecord) of canonical records.

  python -m glipjax.data.prepare --format coco --annotations annotations/instances_val2017.json \
      --images val2017 --name coco --split validation --data_dir ~/tensorflow_datasets

Formats: coco (COCO 2017, Objects365, ODinW, custom), lvis (LVIS v1), mdetr (Flickr30k Entities, GoldG mixed,
RefCOCO/+/g), odvg (Grounding-DINO jsonl: detection or grounding lines), captions (image-caption jsonl).
Prints the statistics (images, boxes, phrases, and every repaired or skipped record by reason); they are also
stored in the dataset's metadata. A mistake in the files is a one-line error naming the file and the record.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from glipjax.data import sources


def prepare(fmt: str, annotations: str, images: str, name: str, data_dir: str, split: str = "train",
            label_map: str | None = None, overwrite: bool = False) -> dict:
  """Prepares one split and returns its statistics."""
  if not pathlib.Path(images).is_dir():
    raise sources.PrepareError(f"image folder {images} does not exist")
  stats = sources.Stats()
  kwargs = dict(label_map=sources.load_label_map(label_map), stats=stats)
  if fmt == "lvis":
    kwargs["lvis"] = True
  categories, stored = sources.reader(fmt).read(annotations, images, **kwargs)
  directory = sources.write(name, split, data_dir, fmt, categories, stored, stats, overwrite=overwrite,
                            annotations=annotations)
  prepared = sources.open_dataset(data_dir, name, split)
  return dict(directory=str(directory), annotations=prepared.annotations, categories=len(categories),
              **prepared.statistics)


def format_statistics(stats: dict) -> str:
  lines = [f"prepared {stats['directory']}: {stats.get('images', 0)} images, {stats.get('boxes', 0)} boxes, "
           f"{stats.get('phrases', 0)} phrases, {stats['categories']} categories"]
  for reason, n in stats.get("counts", {}).items():
    examples = stats.get("examples", {}).get(reason, [])
    lines.append(f"  {reason}: {n}" + (f"  (e.g. {'; '.join(examples)})" if examples else ""))
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True, choices=sorted(sources.FORMATS))
  p.add_argument("--annotations", required=True, help="the annotation file (.json or .jsonl)")
  p.add_argument("--images", required=True, help="the folder the annotation file's image paths are relative to")
  p.add_argument("--name", required=True, help="the dataset's name in config.data.sources, e.g. coco, o365")
  p.add_argument("--data_dir", required=True, help="where prepared datasets live (config.data.data_dir)")
  p.add_argument("--split", default="train", choices=sources.SPLITS)
  p.add_argument("--label_map", default=None, help="JSON {category id: name} (or a list of names) to name labels")
  p.add_argument("--overwrite", action="store_true", help="replace an already prepared split")
  p.add_argument("--json", action="store_true", help="print the statistics as JSON")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    stats = prepare(args.format, args.annotations, args.images, args.name, args.data_dir, args.split,
                    args.label_map, args.overwrite)
  except sources.PrepareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(stats, indent=2) if args.json else format_statistics(stats))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
