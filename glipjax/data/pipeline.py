"""The grain input pipeline: prepared datasets (glipjax/data/sources) -> a weighted mixture per aspect-ratio
bucket -> per-example transforms -> static-shape batches (glipjax/data/batch.py), one canvas per batch.

Data config keys (configs/base.py `data`): sources ((name, weight), ...) read from data_dir, eval_source (the
dataset evaluated; default the first source), train_short_sides, max_size, eval_short_side, aspect_buckets
(canvas aspect ratios, glipjax/data/buckets.py; empty: every batch on the one `canvas`, a scale drawn per
example), flip_prob, max_boxes, max_phrases, num_workers.
Each process decodes only its contiguous rows of every global batch, so the global batch at a step does not
depend on the process count. The returned iterator is checkpointable (`get_state` / `set_state`) for exact resume.
"""
from __future__ import annotations

import collections
import logging
import threading

import grain
import jax
import numpy as np

from glipjax.data import batch as batch_lib
from glipjax.data import buckets as buckets_lib
from glipjax.data import few_shot, prompting, records, sources, transforms
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
                                 max_phrases=data_cfg.max_phrases,
                                 caption_negatives=data_cfg.get("caption_negatives", 0),
                                 fixed=data_cfg.get("fixed_prompt", False))


def eval_canvas(data_cfg, image_hw: tuple[int, int]) -> tuple[int, int]:
  """The canvas an evaluation (or prediction) image of size `image_hw` is placed on."""
  buckets = buckets_lib.Buckets.from_config(data_cfg)
  if buckets is None:
    return tuple(data_cfg.canvas)
  return buckets.canvas(int(buckets.assign(np.array([image_hw]))[0]), buckets.eval_short_side)


class _Transform:
  """Per-example transform: decode, validate, prompt, resize onto `canvas` at `short_side`, flip, encode.
  Returns None for examples to skip (counted in SKIPPED). `prompter(record, rng)` (training) or
  `prompter(record)` (evaluation) turns the record into a `prompting.Prompt`; evaluation examples may have no
  box under their prompt, training ones not."""

  def __init__(self, data_cfg, tokenizer: Tokenizer, max_query_len: int, train: bool, prompter=None,
               source_name: str = ""):
    self.cfg, self.tok, self.max_query_len, self.train = data_cfg, tokenizer, max_query_len, train
    self.prompter = prompter or prompting.caption_prompt
    self.source_name = source_name

  def __call__(self, record, rng: np.random.Generator | None, short_side: int, canvas: tuple[int, int]):
    c = self.cfg
    spec = batch_lib.BatchSpec(canvas, c.max_boxes, c.max_phrases, self.max_query_len)
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
      orig_hw = np.array(image.shape[:2], np.int32)
      image, boxes = transforms.resize(image, boxes, short_side, c.max_size, canvas)
      caption, spans = prompt.caption, prompt.spans
      if self.train and rng.random() < c.flip_prob:
        image, boxes, caption, spans = transforms.hflip(image, boxes, caption, spans)
      span_phrase = np.arange(len(spans)) if prompt.span_phrase is None else prompt.span_phrase
      out = transforms.encode_example(image, caption, boxes, phrase, records.phrase_span_lists(spans, span_phrase),
                                      self.tok, spec, allow_empty=not self.train, dropped=SKIPPED)
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


class _Tagged:
  """record -> (source index, record): which source's prompter and transform an element of a mixture needs."""

  def __init__(self, index: int):
    self.index = index

  def __call__(self, record):
    return self.index, record


class _Schedule:
  """Training batch n -> (bucket, scale index, n's rank among the batches of its bucket), drawn per batch from
  a counter-based generator: the same on any process count, O(1) amortised for any n (resume included)."""
  CHUNK = 4096

  def __init__(self, bucket_probs: np.ndarray, num_scales: int, seed: int):
    self.probs, self.num_scales, self.seed = bucket_probs, num_scales, seed
    self._starts = [np.zeros(len(bucket_probs), np.int64)]  # batches per bucket before each chunk
    self._lock = threading.Lock()

  def _chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.seed, 0x6275636b, k])
    return (rng.choice(len(self.probs), size=self.CHUNK, p=self.probs),
            rng.integers(self.num_scales, size=self.CHUNK))

  def __call__(self, n: int) -> tuple[int, int, int]:
    k, j = divmod(n, self.CHUNK)
    with self._lock:
      while len(self._starts) <= k:
        counts = np.bincount(self._chunk(len(self._starts) - 1)[0], minlength=len(self.probs))
        self._starts.append(self._starts[-1] + counts)
      start = self._starts[k]
    bucket, scale = self._chunk(k)
    b = int(bucket[j])
    return b, int(scale[j]), int(start[b] + (bucket[:j] == b).sum())


class _TrainBatches:
  """Global batch index -> this process's rows [start, stop) of it. Batch n draws (bucket, scale) from the
  schedule and takes its rows from its bucket's stream, a weighted mixture of the sources' records in that
  bucket, each shuffled and repeated: row r of batch n is element rank * global_batch_size + r of the stream,
  whatever the process count. A row whose example is skipped takes the same row of the bucket's next batch
  instead (a deterministic stand-in), so a batch does not depend on which process met the skip."""

  def __init__(self, streams, transforms_, schedule: _Schedule, buckets, data_cfg, global_batch_size: int,
               rows: tuple[int, int], seed: int):
    self.streams, self.transforms, self.schedule, self.buckets = streams, transforms_, schedule, buckets
    self.cfg, self.global_batch_size, self.rows, self.seed = data_cfg, global_batch_size, rows, seed

  def _example(self, bucket: int, position: int, short_side: int | None, canvas):
    source, record = self.streams[bucket][position]
    rng = np.random.default_rng([self.seed, bucket, position])
    short = int(rng.choice(self.cfg.train_short_sides)) if short_side is None else short_side
    return self.transforms[source](record, rng, short, canvas)

  def __call__(self, batch_index: int) -> dict:
    bucket, scale, rank = self.schedule(batch_index)
    if self.buckets is None:  # one canvas; the scale is drawn per example
      short_side, canvas = None, tuple(self.cfg.canvas)
    else:
      short_side = self.buckets.short_sides[scale]
      canvas = self.buckets.canvas(bucket, short_side)
    examples = []
    for row in range(*self.rows):
      position = rank * self.global_batch_size + row
      for offset in range(1000):
        example = self._example(bucket, position + offset * self.global_batch_size, short_side, canvas)
        if example is not None:
          break
      else:
        raise RuntimeError(f"no decodable example found near stream position {position}; see the skip warnings")
      examples.append(example)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class _EvalBatches:
  """Global batch index -> this process's rows of it, for one ordered pass: the split's records grouped by
  bucket (in record order within a bucket), each group cut into batches, the last padded with stand-ins
  marked `valid` False (the group's first decodable example, on the group's canvas)."""

  def __init__(self, source, transform: _Transform, groups: list[np.ndarray], canvases, short_side: int,
               global_batch_size: int, rows: tuple[int, int]):
    self.source, self.transform, self.groups, self.canvases = source, transform, groups, canvases
    self.short_side, self.global_batch_size, self.rows = short_side, global_batch_size, rows
    self.first_batch = np.cumsum([0] + [-(-len(g) // global_batch_size) for g in groups])

  def __len__(self) -> int:
    return int(self.first_batch[-1])

  def _example(self, group: int, i: int):
    return self.transform(self.source[int(self.groups[group][i])], None, self.short_side, self.canvases[group])

  def _stand_in(self, group: int, i: int) -> dict:
    n = len(self.groups[group])
    for offset in range(1, min(n, 1000) + 1):
      example = self._example(group, (i + offset) % n)
      if example is not None:
        return example
    raise RuntimeError(f"no decodable example in a bucket of {n} records; see the skip warnings above")

  def __call__(self, batch_index: int) -> dict:
    group = int(np.searchsorted(self.first_batch, batch_index, side="right") - 1)
    start = (batch_index - self.first_batch[group]) * self.global_batch_size
    examples, valid = [], []
    for row in range(*self.rows):
      i = start + row
      example = self._example(group, i) if i < len(self.groups[group]) else None
      valid.append(example is not None)
      examples.append(example if example is not None else self._stand_in(group, i))
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
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


def _train_batches(data_cfg, split, tokenizer, global_batch_size, rows, seed, max_query_len, prompter):
  datasets, weights = open_datasets(data_cfg, split), [w for _, w in source_weights(data_cfg)]
  if data_cfg.get("few_shot", 0) > 0:  # the ODinW protocol: k images per category, drawn with the run's seed
    datasets = [few_shot.subset(d, data_cfg.few_shot, seed) for d in datasets]
  buckets = buckets_lib.Buckets.from_config(data_cfg)
  transforms_ = []
  for dataset in datasets:
    if dataset.kind == "captions":
      raise ValueError(f"dataset {dataset.name!r} holds captions without boxes: pseudo-label it first")
    transforms_.append(_Transform(data_cfg, tokenizer, max_query_len, True,
                                  prompter or train_prompter(data_cfg, dataset, tokenizer, max_query_len),
                                  dataset.name))
  num_buckets = 1 if buckets is None else len(buckets.aspects)
  members = [[np.arange(len(d.source)) if buckets is None else np.nonzero(buckets.assign(d.image_sizes) == b)[0]
              for b in range(num_buckets)] for d in datasets]
  # Source i is drawn with probability weight_i whatever the buckets: bucket b gets sum_i weight_i * share_ib of
  # the batches and, within it, source i the share weight_i * share_ib.
  mass = np.array([[w * len(m[b]) / max(1, len(d.source)) for b in range(num_buckets)]
                   for d, m, w in zip(datasets, members, weights)])
  streams, live = [], mass.sum(0) > 0
  for b in range(num_buckets):
    # Each source shuffled (every epoch anew) and repeated on its own, then interleaved deterministically by
    # weight: element n of a stream is the same on any process count, and random access stays O(1).
    parts = [(grain.MapDataset.source(sources.Subset(d.source, m[b])).shuffle(seed=seed + 1009 * b + i).repeat()
              .map(_Tagged(i)), mass[i, b]) for i, (d, m) in enumerate(zip(datasets, members)) if mass[i, b] > 0]
    streams.append(None if not parts else parts[0][0] if len(parts) == 1 else
                   grain.MapDataset.mix([p for p, _ in parts], [w for _, w in parts]))
  if not live.any():
    raise ValueError(f"the training sources {[d.name for d in datasets]} hold no records")
  probs = mass.sum(0) / mass.sum()
  schedule = _Schedule(probs, 1 if buckets is None else len(buckets.short_sides), seed)
  return _TrainBatches(streams, transforms_, schedule, buckets, data_cfg, global_batch_size, rows, seed)


def _eval_batches(data_cfg, dataset, tokenizer, global_batch_size, rows, max_query_len, prompter):
  transform = _Transform(data_cfg, tokenizer, max_query_len, False, prompter, dataset.name)
  buckets = buckets_lib.Buckets.from_config(data_cfg)
  if buckets is None:
    groups, canvases = [np.arange(len(dataset.source))], [tuple(data_cfg.canvas)]
  else:
    assigned = buckets.assign(dataset.image_sizes)
    groups = [np.nonzero(assigned == b)[0] for b in range(len(buckets.aspects))]
    canvases = [buckets.canvas(b, buckets.eval_short_side) for b in range(len(buckets.aspects))]
    keep = [i for i, g in enumerate(groups) if len(g)]
    groups, canvases = [groups[i] for i in keep], [canvases[i] for i in keep]
  return _EvalBatches(dataset.source, transform, groups, canvases, data_cfg.eval_short_side, global_batch_size,
                      rows)


def make_pipeline(data_cfg, split: str, tokenizer: Tokenizer, *, global_batch_size: int, train: bool, seed: int,
                  max_query_len: int, shard_by_process: bool = True, rows: tuple[int, int] | None = None,
                  prompter=None, dataset: sources.Dataset | None = None):
  """An iterator of numpy batch dicts (glipjax/data/batch.py): rows `rows` (default: this process's equal slice)
  of each global batch. Train: the sources mixed by weight, shuffled (reshuffled every epoch), repeated, random
  scale and flip, one aspect-ratio bucket per batch. Eval: one ordered pass per bucket; each bucket's last global
  batch is padded with `valid` False. Element n of the iterator is global batch n on any process count, and its
  state is {"next_index": batches consumed}, so a checkpoint fits any process count. `prompter`: see
  `_Transform` (default: each source's training prompts, or the record's caption for evaluation). `dataset`
  (evaluation): the records to pass over instead of `split` of `data.eval_source` (a subset, say)."""
  rows = rows or default_rows(global_batch_size, shard_by_process)
  if train:
    local = _train_batches(data_cfg, split, tokenizer, global_batch_size, rows, seed, max_query_len, prompter)
    num_batches = 2 ** 62  # endless: the streams repeat
  else:
    local = _eval_batches(data_cfg, dataset or eval_dataset(data_cfg, split), tokenizer, global_batch_size, rows,
                          max_query_len, prompter)
    num_batches = len(local)
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
