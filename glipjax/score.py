"""Score an existing predictions file against the original annotation files, with the code `glipjax.evaluate`
uses, and print the metrics as one JSON object.

  python -m glipjax.score --protocol coco --annotations annotations/instances_val2017.json \
      --results runs/x/eval_coco_validation_predictions.json [--out metrics.json]

Protocols and files:
- coco: a COCO annotation file; results [{image_id, category_id, bbox: [x, y, w, h], score}] (the file's own ids,
  original image pixels). AP, AP50, AP75, APs, APm, APl.
- lvis: an LVIS v1 annotation file (minival, val), the same results format; federated AP as the lvis package
  computes it, 300 detections per image, or --fixed_ap (the best 10,000 per category over the split). + APr/c/f.
- flickr30k: the split's image list (Flickr30k Entities' test.txt / val.txt) or MDETR's json of the split, and
  --flickr_entities (Sentences/, Annotations/; default: the annotation file's folder); results [{image_id,
  sentence_id, boxes: [ranked [x1, y1, x2, y2] per evaluated phrase in sentence order]}]. Recall@1/5/10
  (--merge_boxes: MDETR's "merged boxes" mode).
- refcoco: MDETR's json of a RefCOCO/+/g split; results [{image_id, boxes: [ranked xyxy], scores}]. acc@0.5.
(ODinW is a mean over datasets: score each dataset's file with coco.)
A file that cannot be scored is a one-line error naming the file and the record.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from glipjax.evaluators.files import ScoreError


def _score(args) -> dict:
  if args.protocol == "coco":
    from glipjax.evaluators import coco
    return coco.score_files(args.annotations, args.results)
  if args.protocol == "lvis":
    from glipjax.evaluators import lvis
    return lvis.score_files(args.annotations, args.results, fixed_ap=args.fixed_ap)
  if args.protocol == "flickr30k":
    from glipjax.evaluators import flickr30k
    return flickr30k.score_files(args.annotations, args.results, flickr_entities=args.flickr_entities,
                                 merge_boxes=args.merge_boxes)
  from glipjax.evaluators import refcoco
  return refcoco.score_files(args.annotations, args.results)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--protocol", required=True, choices=("coco", "lvis", "flickr30k", "refcoco"))
  p.add_argument("--annotations", required=True, help="the official annotation file (flickr30k: the split list)")
  p.add_argument("--results", required=True, help="the predictions file")
  p.add_argument("--flickr_entities", default=None, help="flickr30k: the folder with Sentences/ and Annotations/")
  p.add_argument("--merge_boxes", action="store_true", help="flickr30k: one union box per phrase (MDETR's mode)")
  p.add_argument("--fixed_ap", action="store_true", help="lvis: fixed AP instead of 300 detections per image")
  p.add_argument("--out", default=None, help="also write the metrics here as JSON")
  args = p.parse_args(argv)
  try:
    metrics = _score(args)
  except ScoreError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.protocol == "lvis":
    metrics["lvis_ap"] = "fixed AP" if args.fixed_ap else "standard AP"
  text = json.dumps(metrics)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
