"""The grain input pipeline: TFDS ArrayRecord source -> per-example numpy transforms -> static-shape batches.

Data config keys (configs/base.py `data`): name ('synthetic_grounding'), builder_config, data_dir,
train_short_sides (random choice per example), max_size, eval_short_side, canvas (static padded H, W; multiples
of 32), flip_prob, max_boxes, max_phrases, num_workers (0 = in-process), shuffle_buffer-free global shuffling.
Each process reads `global_batch_size // process_count` examples of its own shard (grain's ShardByJaxProcess
semantics via slicing). The returned iterator is checkpointable (`get_state` / `set_state`) for exact resume.
"""
from __future__ import annotations

import collections
import logging

import grain
import jax
import numpy as np

from glipjax.data import synthetic_grounding, transforms
from glipjax.text.tokenizers import Tokenizer

SKIPPED: collections.Counter = collections.Counter()  # reasons examples were skipped, per process


def open_source(data_cfg, split: str):
  if data_cfg.name != "synthetic_grounding":
    raise ValueError(f"unknown dataset {data_cfg.name!r}; available: 'synthetic_grounding'")
  return synthetic_grounding.data_source(data_cfg.data_dir, split, data_cfg.builder_config)


def _decode(record) -> dict:
  caption = record["caption"]
  return dict(image=np.asarray(record["image"]), image_id=int(record["image_id"]),
              caption=caption.decode("utf-8") if isinstance(caption, bytes) else str(caption),
              boxes=np.asarray(record["boxes"]), box_phrase=np.asarray(record["box_phrase"]),
              phrase_spans=np.asarray(record["phrase_spans"]))


class _Transform:
  """Picklable per-example transform; returns None for examples to skip (counted in SKIPPED)."""

  def __init__(self, data_cfg, tokenizer: Tokenizer, max_query_len: int, train: bool):
    self.cfg, self.tok, self.max_query_len, self.train = data_cfg, tokenizer, max_query_len, train

  def __call__(self, record, rng: np.random.Generator | None = None):
    c = self.cfg
    try:
      ex = _decode(record)
      image = ex["image"]
      if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise transforms.BadExample(f"bad image shape {image.shape}")
      boxes, phrase, dropped = transforms.sanitize_boxes(ex["boxes"], ex["box_phrase"], image.shape[:2],
                                                         len(ex["phrase_spans"]))
      if dropped:
        SKIPPED["invalid boxes (dropped)"] += dropped
      short = int(rng.choice(c.train_short_sides)) if self.train else c.eval_short_side
      orig_hw = np.array(image.shape[:2], np.int32)
      image, boxes = transforms.resize(image, boxes, short, c.max_size)
      caption, spans = ex["caption"], ex["phrase_spans"]
      if self.train and rng.random() < c.flip_prob:
        image, boxes, caption, spans = transforms.hflip(image, boxes, caption, spans)
      out = transforms.encode_example(image, caption, boxes, phrase, spans, self.tok, canvas=tuple(c.canvas),
                                      max_boxes=c.max_boxes, max_phrases=c.max_phrases,
                                      max_query_len=self.max_query_len)
    except (transforms.BadExample, ValueError, KeyError, OSError) as e:
      SKIPPED[type(e).__name__] += 1
      logging.warning("skipping an example: %s", e)
      return None
    out["image_id"] = np.int32(ex["image_id"])
    out["orig_hw"] = orig_hw
    return out


def make_pipeline(data_cfg, split: str, tokenizer: Tokenizer, *, global_batch_size: int, train: bool, seed: int,
                  max_query_len: int, shard_by_process: bool = True):
  """An iterator of numpy batch dicts (this process's share of each global batch). Train: shuffled, repeated,
  random resize/flip. Eval: one ordered pass, last partial batch padded by repeating with `valid` False."""
  count = jax.process_count() if shard_by_process else 1
  if global_batch_size % count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
  local_batch = global_batch_size // count
  ds = grain.MapDataset.source(open_source(data_cfg, split))
  if shard_by_process and count > 1:
    ds = ds[jax.process_index()::count]
  transform = _Transform(data_cfg, tokenizer, max_query_len, train)
  if train:
    ds = ds.shuffle(seed=seed).repeat().random_map(lambda r, rng: transform(r, rng), seed=seed)
  else:
    ds = ds.map(lambda r: transform(r))
  ds = ds.filter(lambda x: x is not None)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, data_cfg.num_workers), prefetch_buffer_size=4))
  if train:
    return iter(it.batch(local_batch, drop_remainder=True))
  return iter(it.batch(local_batch, drop_remainder=False, batch_fn=lambda xs: _pad_batch(xs, local_batch)))


def _pad_batch(examples: list[dict], size: int) -> dict:
  valid = np.arange(size) < len(examples)
  examples = examples + [examples[-1]] * (size - len(examples))
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  batch["valid"] = valid
  return batch


def iter_captions(data_cfg, split: str = "train"):
  source = open_source(data_cfg, split)
  for i in range(len(source)):
    cap = source[i]["caption"]
    yield cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
