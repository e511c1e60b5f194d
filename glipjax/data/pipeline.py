"""The grain input pipeline: prepared datasets (glipjax/data/sources) -> a weighted mixture -> per-example
transforms -> static-shape batches.

Data config keys (configs/base.py `data`): sources ((name, weight), ...) read from data_dir, eval_source (the
dataset evaluated; default the first source), train_short_sides (random choice per example), max_size,
eval_short_side, canvas (static padded H, W; multiples of 32), flip_prob, max_boxes, max_phrases, num_workers.
Each process decodes only its contiguous rows of every global batch, so the global batch at a step does not
depend on the process count. The returned iterator is checkpointable (`get_state` / `set_state`) for exact resume.
"""
from __future__ import annotations

import collections
import logging

import grain
import jax
import numpy as np

from glipjax.data import prompting, records, sources, transforms
from glipjax.text.tokenizers import Tokenizer

SKIPPED: collections.Counter = collections.Counter()  # reasons examples (or boxes) were skipped, per process


def source_weights(data_cfg) -> list[tuple[str, float]]:
  """`data.sources` checked: a non-empty sequence of (prepared dataset name, weight > 0)."""
  try:
    pairs = [(str(n), float(w)) for n, w in data_cfg.sources]
  except (TypeError, ValueError) as e:
    raise ValueError(f"data.sources must be ((name, weight), ...), e.g. (('coco', 1.0),); got "
                     f"{data_cfg.sources!r}") from e
  if not pairs or any(w <= 0 for _, w in pairs):
    raise ValueError(f"data.sources needs at least one dataset and positive weights; got {data_cfg.sources!r}")
  return pairs


def open_datasets(data_cfg, split: str = "train") -> list[sources.Dataset]:
  return [sources.open_dataset(data_cfg.data_dir, name, split) for name, _ in source_weights(data_cfg)]


def eval_dataset(data_cfg, split: str = "validation") -> sources.Dataset:
  return sources.open_dataset(data_cfg.data_dir, data_cfg.eval_source or source_weights(data_cfg)[0][0], split)


def train_prompter(data_cfg, dataset: sources.Dataset, tokenizer: Tokenizer,
                   max_query_len: int) -> prompting.TrainPrompter:
  return prompting.TrainPrompter(dataset.category_names, detection_prob=data_cfg.detection_prompt_prob,
                                 max_negatives=data_cfg.max_negatives, tokenizer=tokenizer, max_len=max_query_len,
                                 max_phrases=data_cfg.max_phrases)


class _Transform:
  """Picklable per-example transform: decode, validate, prompt, resize, flip, encode. Returns None for examples
  to skip (counted in SKIPPED). `prompter(record, rng)` (training) or `prompter(record)` (evaluation) turns the
  record into a `prompting.Prompt`; evaluation examples may have no box under their prompt, training ones not."""

  def __init__(self, data_cfg, tokenizer: Tokenizer, max_query_len: int, train: bool, prompter=None,
               source_name: str = ""):
    self.cfg, self.tok, self.max_query_len, self.train = data_cfg, tokenizer, max_query_len, train
    self.prompter = prompter or prompting.caption_prompt
    self.source_name = source_name

  def __call__(self, record, rng: np.random.Generator | None = None):
    c = self.cfg
    try:
      ex = records.decode(record)
      image = ex["image"]
      if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise transforms.BadExample(f"bad image shape {image.shape}")
      if self.train:  # crowd regions are never positives; GLIP trains without them
        ex = _without(ex, ex["iscrowd"])
      boxes, (labels, box_phrase, iscrowd), dropped = transforms.sanitize_boxes(
          ex["boxes"], image.shape[:2], ex["labels"], ex["box_phrase"], ex["iscrowd"])
      if dropped:
        SKIPPED["invalid boxes (dropped)"] += dropped
      prompt = self.prompter(dict(ex, boxes=boxes, labels=labels, box_phrase=box_phrase, iscrowd=iscrowd),
                             *((rng,) if self.train else ()))
      named = prompt.box_phrase >= 0
      boxes, phrase = boxes[named], prompt.box_phrase[named]
      short = int(rng.choice(c.train_short_sides)) if self.train else c.eval_short_side
      orig_hw = np.array(image.shape[:2], np.int32)
      image, boxes = transforms.resize(image, boxes, short, c.max_size)
      caption, spans = prompt.caption, prompt.spans
      if self.train and rng.random() < c.flip_prob:
        image, boxes, caption, spans = transforms.hflip(image, boxes, caption, spans)
      span_phrase = np.arange(len(spans)) if prompt.span_phrase is None else prompt.span_phrase
      out = transforms.encode_example(image, caption, boxes, phrase, records.phrase_span_lists(spans, span_phrase),
                                      self.tok, canvas=tuple(c.canvas), max_boxes=c.max_boxes,
                                      max_phrases=c.max_phrases, max_query_len=self.max_query_len,
                                      allow_empty=not self.train, dropped=SKIPPED)
    except (transforms.BadExample, ValueError, KeyError, OSError) as e:
      SKIPPED[type(e).__name__] += 1
      logging.warning("skipping example %s%s: %s", _record_id(record),
                      f" of {self.source_name}" if self.source_name else "", e)
      return None
    out["image_id"] = np.int32(ex["image_id"])
    out["orig_hw"] = orig_hw
    if not self.train:  # what each phrase stands for, to score detections by category
      out["phrase_categories"] = transforms.pad_to(prompt.phrase_categories[:c.max_phrases], c.max_phrases)
    return out


def _without(ex: dict, drop: np.ndarray) -> dict:
  if not drop.any():
    return ex
  keep = ~drop
  return dict(ex, boxes=ex["boxes"][keep], labels=ex["labels"][keep], box_phrase=ex["box_phrase"][keep],
              iscrowd=ex["iscrowd"][keep])


def _record_id(record) -> str:
  try:
    return f"image_id {int(record['image_id'])}"
  except (KeyError, TypeError, ValueError):
    return "(no image_id)"


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
                  max_query_len: int, shard_by_process: bool = True, rows: tuple[int, int] | None = None,
                  prompter=None):
  """An iterator of numpy batch dicts: rows `rows` (default: this process's equal slice) of each global batch.
  Train: shuffled (reshuffled every epoch), repeated, random resize/flip. Eval: one ordered pass; the last
  global batch is padded with `valid` False. Element n of the iterator is global batch n on any process count,
  and its state is {"next_index": batches consumed}, so a checkpoint fits any process count. `prompter`: see
  `_Transform` (default: the config's training mixture, or the record's caption for evaluation)."""
  rows = rows or default_rows(global_batch_size, shard_by_process)
  if train:
    parts, weights = [], []
    for i, (dataset, (_, weight)) in enumerate(zip(open_datasets(data_cfg, split), source_weights(data_cfg))):
      if dataset.kind == "captions":
        raise ValueError(f"dataset {dataset.name!r} holds captions without boxes: pseudo-label it first")
      transform = _Transform(data_cfg, tokenizer, max_query_len, True,
                             prompter or train_prompter(data_cfg, dataset, tokenizer, max_query_len), dataset.name)
      # Each source shuffled (every epoch anew) and repeated on its own, then interleaved deterministically by
      # weight: element n of the mixture is the same on any process count, and random access stays O(1).
      parts.append(grain.MapDataset.source(dataset.source).shuffle(seed=seed + i).repeat()
                   .random_map(transform, seed=seed + i))
      weights.append(weight)
    examples = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)
    num_batches = len(examples) // global_batch_size
  else:
    dataset = eval_dataset(data_cfg, split)
    transform = _Transform(data_cfg, tokenizer, max_query_len, False, prompter, dataset.name)
    examples = grain.MapDataset.source(dataset.source).map(transform)
    num_batches = -(-len(examples) // global_batch_size)
  local = _LocalBatches(examples, global_batch_size, rows, len(examples), with_valid=not train)
  batches = grain.MapDataset.range(num_batches).map(local)
  return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=max(1, data_cfg.num_workers),
                                                         prefetch_buffer_size=4)))


def iter_captions(data_cfg, split: str = "train"):
  """Every text the model will read, for training a tokenizer: each source's category names, then its captions."""
  for dataset in open_datasets(data_cfg, split):
    yield from dataset.category_names
    for i in range(len(dataset.source)):
      cap = dataset.source[i]["caption"]
      yield cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
