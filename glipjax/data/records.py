"""The canonical record: what every data source stores (one TFDS feature schema) and what the pipeline reads.

A record is one image with its boxes and, for grounding data, one caption:
- `boxes` [N, 4] float32 xyxy in pixels, pixel-inclusive (x2 = x + w - 1, as maskrcnn_benchmark converts COCO's
  xywh); `labels` [N] int32 the category of each box, 1..K into the dataset's category list (0: none, e.g. a
  grounding box); `iscrowd` [N] bool (crowd regions: ignored, never positives);
- `caption` (empty for detection records) with its phrases: `phrase_spans` [S, 2] character spans and
  `span_phrase` [S] the phrase each span belongs to (a phrase may have several spans, as MDETR's
  `tokens_positive`); `box_phrase` [N] the phrase each box grounds (-1: none); `phrase_labels` [P] the category a
  phrase names when known (0 otherwise);
- LVIS's per-image `neg_category_ids` / `not_exhaustive_category_ids` (category indices 1..K), and the source's
  own ids (`original_image_id`, `sentence_id`; -1 when absent) for evaluators that match annotation files.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

_VECTOR = dict(labels=np.int32, iscrowd=np.bool_, box_phrase=np.int32, span_phrase=np.int32,
               phrase_labels=np.int32, neg_category_ids=np.int32, not_exhaustive_category_ids=np.int32)

FEATURES = tfds.features.FeaturesDict({
    # Encoded bytes as the source had them (JPEG/PNG), or re-encoded after a repair (EXIF, CMYK, 16-bit...).
    "image": tfds.features.Image(shape=(None, None, 3)),
    "image_id": np.int64,
    "original_image_id": np.int64,
    "sentence_id": np.int64,
    "file_name": tfds.features.Text(),
    "caption": tfds.features.Text(),
    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    "phrase_spans": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
    **{k: tfds.features.Tensor(shape=(None,), dtype=v) for k, v in _VECTOR.items()},
})


def stored(*, image, image_id: int, boxes, labels=None, iscrowd=None, caption: str = "", phrase_spans=None,
           span_phrase=None, box_phrase=None, phrase_labels=None, file_name: str = "", original_image_id: int = -1,
           sentence_id: int = -1, neg_category_ids=(), not_exhaustive_category_ids=()) -> dict:
  """A record in the stored schema (FEATURES), defaults filled: what a source's reader yields."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = len(boxes)
  spans = np.asarray(phrase_spans if phrase_spans is not None else [], np.int32).reshape(-1, 2)
  span_phrase = np.arange(len(spans)) if span_phrase is None else span_phrase
  num_phrases = int(np.max(span_phrase)) + 1 if len(spans) else 0
  vec = lambda x, default, dtype: np.asarray(default if x is None else x, dtype).reshape(-1)
  return dict(
      image=image, image_id=int(image_id), original_image_id=int(original_image_id), sentence_id=int(sentence_id),
      file_name=file_name, caption=caption, boxes=boxes, phrase_spans=spans,
      labels=vec(labels, np.zeros(n), np.int32), iscrowd=vec(iscrowd, np.zeros(n), np.bool_),
      box_phrase=vec(box_phrase, np.full(n, -1), np.int32), span_phrase=vec(span_phrase, [], np.int32),
      phrase_labels=vec(phrase_labels, np.zeros(num_phrases), np.int32),
      neg_category_ids=vec(neg_category_ids, [], np.int32),
      not_exhaustive_category_ids=vec(not_exhaustive_category_ids, [], np.int32))


def decode(record) -> dict:
  """A record read back from TFDS (tfds.data_source) -> the canonical in-memory record (numpy arrays, str)."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  out = dict(image=np.asarray(record["image"]), image_id=int(record["image_id"]),
             caption=text(record["caption"]), file_name=text(record.get("file_name", b"")),
             boxes=np.asarray(record["boxes"], np.float32).reshape(-1, 4),
             phrase_spans=np.asarray(record["phrase_spans"], np.int32).reshape(-1, 2),
             original_image_id=int(record.get("original_image_id", -1)),
             sentence_id=int(record.get("sentence_id", -1)))
  n = len(out["boxes"])
  defaults = dict(labels=np.zeros(n), iscrowd=np.zeros(n), box_phrase=np.full(n, -1),
                  span_phrase=np.arange(len(out["phrase_spans"])), phrase_labels=np.zeros(0),
                  neg_category_ids=np.zeros(0), not_exhaustive_category_ids=np.zeros(0))
  for key, dtype in _VECTOR.items():
    out[key] = np.asarray(record[key] if key in record else defaults[key], dtype).reshape(-1)
  return out


def text(value) -> str:
  """A stored string field (bytes from the array records) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def num_phrases(record: dict) -> int:
  return int(record["span_phrase"].max()) + 1 if len(record["span_phrase"]) else 0


def phrase_span_lists(spans: np.ndarray, span_phrase: np.ndarray) -> list[list[tuple[int, int]]]:
  """[S, 2] spans + [S] phrase index -> each phrase's list of (begin, end) spans, in phrase order."""
  count = int(np.max(span_phrase)) + 1 if len(span_phrase) else 0
  out: list[list[tuple[int, int]]] = [[] for _ in range(count)]
  for (b, e), p in zip(np.asarray(spans).reshape(-1, 2), np.asarray(span_phrase).reshape(-1)):
    out[int(p)].append((int(b), int(e)))
  return out
