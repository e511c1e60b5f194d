"""Score an existing predictions file against the original annotation file, with the code `glipjax.evaluate`
uses, and print the metrics as one JSON object.

  python -m glipjax.score --protocol coco --annotations annotations/instances_val2017.json \
      --results runs/x/predictions.json [--out metrics.json]

Protocols: coco (COCO results json: [{image_id, category_id, bbox: [x, y, w, h], score}], the file's own ids,
original image pixels). A file that cannot be scored is a one-line error naming the file and the record.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from glipjax.evaluators import coco, refcoco
from glipjax.evaluators.files import ScoreError

PROTOCOLS = {"coco": coco.score_files, "refcoco": refcoco.score_files}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
  p.add_argument("--annotations", required=True, help="the official annotation file")
  p.add_argument("--results", required=True, help="the predictions file")
  p.add_argument("--out", default=None, help="also write the metrics here as JSON")
  args = p.parse_args(argv)
  try:
    metrics = PROTOCOLS[args.protocol](args.annotations, args.results)
  except ScoreError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(metrics)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
