"""How right a teacher's pseudo-labels are, against ground truth the teacher never saw (a labelled sample of the
captioned images, or the scenes of `glipjax.tools.synthetic_files`, whose instances.json holds every object):

  python -m glipjax.tools.pseudo_label_quality --data_dir runs/tfds --dataset st_pseudo \
      --truth runs/files/st_unlabelled/instances.json

For every pseudo-box whose image is in the COCO json (matched by file name): does it lie on an object (IoU >= 0.5
with some ground-truth box), and is that object of the kind its phrase names (every word of the category name
starts a word of the phrase: "red circle" names "two red circles"). Prints the fractions, per category too.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys

import numpy as np

from glipjax.data import records as records_lib, sources
from glipjax.evaluators.files import ScoreError, load_json
from glipjax.evaluators.flickr30k import iou


def names_kind(phrase: str, category: str) -> bool:
  """Whether `phrase` names `category`: each word of the name begins some word of the phrase (plurals pass)."""
  words = re.findall(r"\w+", phrase.lower())
  return all(any(w.startswith(part) for w in words) for part in re.findall(r"\w+", category.lower()))


def load_truth(path: str | pathlib.Path) -> dict[str, list[tuple[np.ndarray, str]]]:
  """{file name: [(xyxy box, category name), ...]} from a COCO detection json."""
  gt = load_json(path, "ground-truth")
  try:
    names = {c["id"]: c["name"] for c in gt["categories"]}
    files = {im["id"]: pathlib.PurePath(im["file_name"]).name for im in gt["images"]}
    truth: dict[str, list] = {f: [] for f in files.values()}
    for a in gt["annotations"]:
      x, y, w, h = (float(v) for v in a["bbox"])
      truth[files[a["image_id"]]].append((np.array([x, y, x + w, y + h]), names[a["category_id"]]))
  except (KeyError, TypeError, ValueError) as e:
    raise ScoreError(f"{path}: not a COCO detection json ({type(e).__name__}: {e})") from e
  return truth


def measure(records, truth: dict[str, list[tuple[np.ndarray, str]]], iou_threshold: float = 0.5) -> dict:
  """Counts over the pseudo-boxes of `records` (grounding records: file_name, caption, phrase_spans, boxes,
  box_phrase) whose image has ground truth."""
  counts = collections.Counter()
  per_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for r in records:
    objects = truth.get(pathlib.PurePath(records_lib.text(r["file_name"])).name)
    if objects is None:
      counts["boxes without ground truth"] += len(r["boxes"])
      continue
    counts["boxes"] += len(r["boxes"])
    if not objects:  # an image with no object: none of its boxes lies on one
      continue
    caption = records_lib.text(r["caption"])
    gt_boxes = np.stack([b for b, _ in objects])
    for box, phrase in zip(np.asarray(r["boxes"], np.float64).reshape(-1, 4), r["box_phrase"]):
      overlaps = iou(box[None], gt_boxes)[0]
      if overlaps.max() < iou_threshold:
        continue
      counts["on an object"] += 1
      kind = objects[int(overlaps.argmax())][1]
      start, end = r["phrase_spans"][int(phrase)]
      right = names_kind(caption[start:end], kind)
      counts["right kind"] += right
      per_kind[kind]["boxes"] += 1
      per_kind[kind]["right kind"] += right
  n = max(counts["boxes"], 1)
  return dict(boxes=counts["boxes"], boxes_without_ground_truth=counts["boxes without ground truth"],
              on_an_object=counts["on an object"] / n, right_kind=counts["right kind"] / n,
              per_kind={k: v["right kind"] / v["boxes"] for k, v in sorted(per_kind.items())})


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--dataset", required=True, help="the pseudo-labelled dataset (glipjax.pseudo_label --out_name)")
  p.add_argument("--split", default="train")
  p.add_argument("--truth", required=True, help="COCO detection json of the same images")
  p.add_argument("--iou", type=float, default=0.5)
  args = p.parse_args(argv)
  try:
    truth = load_truth(args.truth)
    dataset = sources.open_dataset(args.data_dir, args.dataset, args.split)
  except (ScoreError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  m = measure((dataset.source[i] for i in range(len(dataset.source))), truth, args.iou)
  print(f"{args.dataset}/{args.split}: {m['boxes']} pseudo-boxes with ground truth "
        f"({m['boxes_without_ground_truth']} without): {m['on_an_object']:.1%} on an object (IoU >= {args.iou}), "
        f"{m['right_kind']:.1%} on an object of the kind their phrase names")
  for kind, share in m["per_kind"].items():
    print(f"  {kind}: {share:.1%} right")


if __name__ == "__main__":
  main()
