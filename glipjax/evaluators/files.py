"""What the file-level scorers share (`glipjax.score` and the protocol modules): reading a results or annotation
file, checking a detection results list, and the one error type a user's bad file raises, its message naming
the file and the record."""
from __future__ import annotations

import json
import math
import pathlib


class ScoreError(ValueError):
  """A results or annotation file that cannot be scored: the message names the file and the record."""


def load_json(path: str | pathlib.Path, what: str):
  """The parsed JSON of `path` (`what`: 'annotation', 'results'...), or a ScoreError naming the file."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (FileNotFoundError, IsADirectoryError) as e:
    raise ScoreError(f"{what} file {path} does not exist") from e
  except UnicodeDecodeError as e:
    raise ScoreError(f"{path}: not UTF-8 text ({e})") from e
  except json.JSONDecodeError as e:
    raise ScoreError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_xywh(box) -> bool:
  return isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box) and box[2] >= 0 and box[3] >= 0


def check_detections(results, gt: dict, path, *, kind: str, category_hint: str = "") -> list[dict]:
  """A COCO-format results list (`[{image_id, category_id, bbox: [x, y, w, h], score}]`) whose images and
  categories are `gt`'s, boxes and scores finite, or a ScoreError naming the first bad record. `kind`: 'COCO',
  'LVIS'; `category_hint` follows an unknown category's message."""
  if not isinstance(results, list):
    article = "an" if kind[0] in "AEFHILMNORSX" else "a"  # as the letter is spoken: an LVIS, a COCO
    raise ScoreError(f"{path}: {article} {kind} results file is a JSON list of detections")
  images = {im["id"] for im in gt.get("images", [])}
  categories = {c["id"] for c in gt.get("categories", [])}
  for n, r in enumerate(results):
    if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
      raise ScoreError(f"{path}: record {n} needs image_id, category_id, bbox and score; got {r!r:.200}")
    if r["image_id"] not in images:
      raise ScoreError(f"{path}: record {n} names image_id {r['image_id']!r}, which the annotation file lacks "
                       "(predictions of another split or dataset?)")
    if r["category_id"] not in categories:
      raise ScoreError(f"{path}: record {n} names category_id {r['category_id']!r}, which the annotation file "
                       f"lacks{category_hint}")
    if not is_xywh(r["bbox"]):
      raise ScoreError(f"{path}: record {n} has bbox {r['bbox']!r:.200}; expected [x, y, width, height], finite, "
                       "width and height >= 0")
    if not is_number(r["score"]):
      raise ScoreError(f"{path}: record {n} has score {r['score']!r:.200}; expected a finite number")
  return results
