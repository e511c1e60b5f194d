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

from glipjax.data import prompting, synthetic, synthetic_grounding, transforms
from glipjax.text.tokenizers import Tokenizer

SKIPPED: collections.Counter = collections.Counter()  # reasons examples were skipped, per process


def open_source(data_cfg, split: str):
  if data_cfg.name != "synthetic_grounding":
    raise ValueError(f"unknown dataset {data_cfg.name!r}; available: 'synthetic_grounding'")
  return synthetic_grounding.data_source(data_cfg.data_dir, split, data_cfg.builder_config)


def category_names(data_cfg) -> list[str]:
  """The dataset's detection vocabulary in category-id order (id = index + 1)."""
  if data_cfg.name != "synthetic_grounding":
    raise ValueError(f"unknown dataset {data_cfg.name!r}; available: 'synthetic_grounding'")
  return synthetic.category_names()


def decode(record) -> dict:
  """A stored record -> the canonical record: image, image_id, boxes [N,4] with category `labels` [N], and the
  caption with its `phrase_spans` [P,2], `box_phrase` [N] (-1: box not in the caption), `phrase_labels` [P]."""
  caption = record["caption"]
  boxes = np.asarray(record["boxes"])
  return dict(image=np.asarray(record["image"]), image_id=int(record["image_id"]),
              caption=caption.decode("utf-8") if isinstance(caption, bytes) else str(caption),
              boxes=boxes, labels=np.asarray(record["labels"]), box_phrase=np.asarray(record["box_phrase"]),
              phrase_spans=np.asarray(record["phrase_spans"]), phrase_labels=np.asarray(record["phrase_labels"]))


def train_prompter(data_cfg, tokenizer: Tokenizer, max_query_len: int) -> prompting.TrainPrompter:
  return prompting.TrainPrompter(category_names(data_cfg), detection_prob=data_cfg.detection_prompt_prob,
                                 max_negatives=data_cfg.max_negatives, tokenizer=tokenizer, max_len=max_query_len,
                                 max_phrases=data_cfg.max_phrases)


class _Transform:
  """Picklable per-example transform: decode, validate, prompt, resize, flip, encode. Returns None for examples
  to skip (counted in SKIPPED). `prompter(record, rng)` (training) or `prompter(record)` (evaluation) turns the
  record into a `prompting.Prompt`; evaluation examples may have no box under their prompt, training ones not."""

  def __init__(self, data_cfg, tokenizer: Tokenizer, max_query_len: int, train: bool, prompter=None):
    self.cfg, self.tok, self.max_query_len, self.train = data_cfg, tokenizer, max_query_len, train
    self.prompter = prompter or (train_prompter(data_cfg, tokenizer, max_query_len) if train
                                 else prompting.caption_prompt)

  def __call__(self, record, rng: np.random.Generator | None = None):
    c = self.cfg
    try:
      ex = decode(record)
      image = ex["image"]
      if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise transforms.BadExample(f"bad image shape {image.shape}")
      boxes, (labels, box_phrase), dropped = transforms.sanitize_boxes(
          ex["boxes"], image.shape[:2], ex["labels"], ex["box_phrase"])
      if dropped:
        SKIPPED["invalid boxes (dropped)"] += dropped
      prompt = self.prompter(dict(ex, boxes=boxes, labels=labels, box_phrase=box_phrase),
                             *((rng,) if self.train else ()))
      named = prompt.box_phrase >= 0
      boxes, phrase = boxes[named], prompt.box_phrase[named]
      short = int(rng.choice(c.train_short_sides)) if self.train else c.eval_short_side
      orig_hw = np.array(image.shape[:2], np.int32)
      image, boxes = transforms.resize(image, boxes, short, c.max_size)
      caption, spans = prompt.caption, prompt.spans
      if self.train and rng.random() < c.flip_prob:
        image, boxes, caption, spans = transforms.hflip(image, boxes, caption, spans)
      out = transforms.encode_example(image, caption, boxes, phrase, spans, self.tok, canvas=tuple(c.canvas),
                                      max_boxes=c.max_boxes, max_phrases=c.max_phrases,
                                      max_query_len=self.max_query_len, allow_empty=not self.train)
    except (transforms.BadExample, ValueError, KeyError, OSError) as e:
      SKIPPED[type(e).__name__] += 1
      logging.warning("skipping example %s: %s", _record_id(record), e)
      return None
    out["image_id"] = np.int32(ex["image_id"])
    out["orig_hw"] = orig_hw
    if not self.train:  # what each phrase stands for, to score detections by category
      out["phrase_categories"] = transforms.pad_to(prompt.phrase_categories[:c.max_phrases], c.max_phrases)
    return out


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
  source = grain.MapDataset.source(open_source(data_cfg, split))
  transform = _Transform(data_cfg, tokenizer, max_query_len, train, prompter)
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
  """Every text the model will read, for training a tokenizer: the category names, then the captions."""
  yield from category_names(data_cfg)
  source = open_source(data_cfg, split)
  for i in range(len(source)):
    cap = source[i]["caption"]
    yield cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
