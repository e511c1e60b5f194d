"""The grain input pipeline: TFDS ArrayRecord source -> per-example numpy transforms -> static-shape batches.

Data config keys (configs/base.py `data`): name ('synthetic_grounding'), builder_config, data_dir,
train_short_sides (random choice per example), max_size, eval_short_side, canvas (static padded H, W; multiples
of 32), flip_prob, max_boxes, max_phrases, num_workers (0 = in-process), shuffle_buffer-free global shuffling.
Each process decodes only its contiguous rows of every global batch, so the global batch at a step does not
depend on the process count. The returned iterator is checkpointable (`get_state` / `set_state`) for exact resume.
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


class _LocalBatches:
  """Global batch index -> this process's rows [start, stop) of it, decoded and stacked. Row r of global batch b
  is example b * global_batch_size + r of the (shuffled, repeated) stream, whatever the process count, so the
  processes together read each global batch exactly once and assemble the single-process batch. A slot whose
  example is skipped (or lies past the end of an eval split) is filled by the next decodable example of the
  stream, a deterministic stand-in (marked `valid` False in eval batches): every process yields the same
  number of batches, and a training batch does not depend on which process met the skip."""

  def __init__(self, examples, global_batch_size: int, rows: tuple[int, int], num_examples: int, with_valid: bool):
    self.examples, self.global_batch_size, self.rows = examples, global_batch_size, rows
    self.num_examples, self.with_valid = num_examples, with_valid

  def _stand_in(self, index: int) -> dict:
    for offset in range(1, min(self.num_examples, 1000) + 1):
      example = self.examples[(index + offset) % self.num_examples]
      if example is not None:
        return example
    raise RuntimeError(f"no decodable example found after position {index}; see the skip warnings above")

  def __call__(self, batch_index: int) -> dict:
    examples, valid = [], []
    for row in range(*self.rows):
      index = batch_index * self.global_batch_size + row
      example = self.examples[index] if index < self.num_examples else None
      valid.append(example is not None)
      examples.append(example if example is not None else self._stand_in(index))
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    if self.with_valid:
      batch["valid"] = np.array(valid)
    return batch


def default_rows(global_batch_size: int, shard_by_process: bool = True) -> tuple[int, int]:
  """Contiguous equal slices by process index: the rows `jax.make_array_from_process_local_data` gives each
  process when the mesh lists devices in `jax.devices()` order (see distributed.process_rows for any mesh)."""
  count = jax.process_count() if shard_by_process else 1
  if global_batch_size % count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
  local = global_batch_size // count
  index = jax.process_index() if shard_by_process else 0
  return index * local, (index + 1) * local


def make_pipeline(data_cfg, split: str, tokenizer: Tokenizer, *, global_batch_size: int, train: bool, seed: int,
                  max_query_len: int, shard_by_process: bool = True, rows: tuple[int, int] | None = None):
  """An iterator of numpy batch dicts: rows `rows` (default: this process's equal slice) of each global batch.
  Train: shuffled (reshuffled every epoch), repeated, random resize/flip. Eval: one ordered pass; the last
  global batch is padded with `valid` False. Element n of the iterator is global batch n on any process count,
  and its state is {"next_index": batches consumed}, so a checkpoint fits any process count."""
  rows = rows or default_rows(global_batch_size, shard_by_process)
  source = grain.MapDataset.source(open_source(data_cfg, split))
  transform = _Transform(data_cfg, tokenizer, max_query_len, train)
  if train:
    examples = source.shuffle(seed=seed).repeat().random_map(lambda r, rng: transform(r, rng), seed=seed)
    num_batches = len(examples) // global_batch_size
  else:
    examples = source.map(lambda r: transform(r))
    num_batches = -(-len(examples) // global_batch_size)
  local = _LocalBatches(examples, global_batch_size, rows, len(examples), with_valid=not train)
  batches = grain.MapDataset.range(num_batches).map(local)
  return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=max(1, data_cfg.num_workers),
                                                         prefetch_buffer_size=4)))


def iter_captions(data_cfg, split: str = "train"):
  source = open_source(data_cfg, split)
  for i in range(len(source)):
    cap = source[i]["caption"]
    yield cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
