"""Self-training, GLIP's teacher -> student step: a trained run (the teacher) grounds the noun phrases of web
image-caption pairs, and its confident boxes become a grounding dataset a student trains on.

  python -m glipjax.data.prepare --format captions --annotations cc3m.jsonl --images cc3m/ --name cc3m \
      --data_dir ~/tensorflow_datasets
  python -m glipjax.pseudo_label --teacher runs/glip_t --dataset cc3m --data_dir ~/tensorflow_datasets \
      --out_name cc3m_pseudo [--split train] [--threshold 0.5] [--checkpoint DIR] [--config.eval.global_batch_size=16]
  python -m glipjax.train ... --config.data.sources="(('cc3m_pseudo', 1.0), ('gnd', 1.0))"

Per caption of the prepared `captions` dataset: its noun phrases (glipjax/text/noun_phrases.py, spaCy) are the
prompt's phrases, as many as the teacher reads (its `data.max_phrases` and query length: phrases cut off are
counted, never prompted); the teacher (its parameters alone, the EMA ones when it keeps them, compiled once per
canvas) detects them through the evaluation pipeline (`evaluators.common.predict_split`, the teacher's own
resizing and buckets), and a detection is kept when its score is >= --threshold (0.5, GLIP's). Kept boxes are in
original-image pixels, xyxy pixel-inclusive, clipped to the image.

The output is the grounding dataset --out_name / --split in --data_dir (format "pseudo", kind "grounding"): each
kept image with its caption, the phrases that got a box as `phrase_spans` (one span each; like MDETR's
`tokens_positive`, phrases without a box stay plain caption text) and the boxes with `box_phrase`. Images with no
kept box are dropped, as GLIP drops them (and a record without a box could not train: the trainer skips it);
so are captions without a noun phrase (the teacher is not run on them). Everything is counted.

Work split and resume. Labels go first to `<data_dir>/<out_name>/<split>/pseudo_label_work/labels.jsonl`, one
JSON line per record (index, phrase spans, kept boxes, scores and phrases, a histogram of all the teacher's
candidate scores), flushed as each batch's detections arrive. The records still to do are cut into chunks of
--chunk records; per chunk, process 0 extracts the phrases (the next chunk's while the teacher runs this one)
and broadcasts them, and every process runs the same global batches over the chunk: each process decodes and
resizes its own rows of every batch and its devices run their share of the sharded teacher. predict_split
gathers every image's detections to every process, so process 0 alone writes the labels file: one writer, one
source of phrases, the same result on any number of processes. A restart (same teacher step, threshold and
parser: `settings.json` says which; anything else is refused) reads the labels file on process 0, drops a line
torn by a kill (that record is labelled again), and labels only the records with no line, so no image is
labelled twice or lost. When every record has its line, process 0 merges the lines in record order into the
prepared dataset. The labels file stays, beside `pseudo_label_stats.json`: images, captions with no phrase,
phrases found / prompted / with a kept box, boxes kept, and the distributions of kept and of all candidate
scores (the teacher's detections after NMS, from `eval.pre_nms_thresh` up); the same statistics are in the
dataset's metadata (`statistics.pseudo_label`). The data_dir must be one file system for all processes.

`--config.a.b=value` overrides the teacher's saved config (eval.global_batch_size, eval.pre_nms_thresh, ...).
Bad input (unknown dataset, another kind than captions, a teacher without a checkpoint, a threshold outside
(0, 1]) is a one-line error and exit status 2; records whose image cannot be read are skipped and counted.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Callable, Iterable

import jax
import numpy as np
from tqdm import tqdm

from glipjax.data import pipeline, prompting, records, sources, transforms
from glipjax.text import noun_phrases, prompts

FORMAT = "pseudo"
WORK_DIR = "pseudo_label_work"
LABELS_FILE = "labels.jsonl"
SETTINGS_FILE = "settings.json"
STATS_FILE = "pseudo_label_stats.json"
CHUNK_BATCHES = 32   # default chunk: this many global evaluation batches
SCORE_BINS = 100     # candidate scores are kept as a histogram of this many bins over [0, 1]
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class PseudoLabelError(ValueError):
  """Input or state that cannot be pseudo-labelled; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Paths:
  split_dir: pathlib.Path

  @classmethod
  def of(cls, data_dir, out_name: str, split: str) -> "Paths":
    return cls(sources.split_dir(data_dir, out_name, split))

  @property
  def work(self) -> pathlib.Path:
    return self.split_dir / WORK_DIR

  @property
  def labels(self) -> pathlib.Path:
    return self.work / LABELS_FILE

  @property
  def settings(self) -> pathlib.Path:
    return self.work / SETTINGS_FILE

  @property
  def stats(self) -> pathlib.Path:
    return self.split_dir / STATS_FILE

  @property
  def output(self) -> pathlib.Path:
    return self.split_dir / sources.VERSION


# ---------------------------------------------------------------------------------------------------------------
# The labels file: one JSON line per record, appended by process 0; a torn or unreadable line is dropped on start.

def _valid_line(obj, num_records: int) -> bool:
  if not isinstance(obj, dict) or not isinstance(obj.get("index"), int) or not 0 <= obj["index"] < num_records:
    return False
  if "skipped" in obj:
    return isinstance(obj["skipped"], str)
  try:
    n = len(obj["boxes"])
    return (len(obj["scores"]) == n and len(obj["phrases"]) == n and isinstance(obj["found"], int)
            and all(len(b) == 4 for b in obj["boxes"]) and all(len(s) == 2 for s in obj["spans"])
            and all(0 <= p < len(obj["spans"]) for p in obj["phrases"]) and isinstance(obj["candidates"], list))
  except (KeyError, TypeError):
    return False


def read_labels(path: pathlib.Path, num_records: int) -> dict[int, dict]:
  """{record index: its line} of the labels file. Lines torn by a kill (no final newline) or otherwise unreadable
  are dropped from the file, so that appending continues after the last good line and those records are labelled
  again; of two lines for one record the first counts."""
  if not path.exists():
    return {}
  lines = path.read_bytes().split(b"\n")
  rest = lines.pop()  # b"" when the file ends with a newline, else a torn last line
  out, good, bad = {}, [], int(bool(rest))
  for line in lines:
    try:
      obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      obj = None
    if not _valid_line(obj, num_records):
      bad += 1
      continue
    if obj["index"] not in out:
      out[obj["index"]] = obj
      good.append(line)
  if bad:
    logging.warning("%s: dropped %d torn or unreadable line(s); their records are labelled again", path, bad)
  if bad or len(good) != len(lines):
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in good))
    os.replace(tmp, path)
  return out


def run_settings(dataset: sources.Dataset, teacher: str, step: int, threshold: float, config) -> dict:
  """What the labels depend on (settings.json): a restart must match it."""
  return dict(dataset=dataset.name, split=dataset.split, records=len(dataset.source),
              teacher=str(pathlib.Path(teacher).expanduser().absolute()), step=int(step), threshold=float(threshold),
              noun_phrases=noun_phrases.version(), max_phrases=int(config.data.max_phrases),
              max_query_len=int(config.model.max_query_len), pre_nms_thresh=float(config.eval.pre_nms_thresh))


def check_settings(paths: Paths, settings: dict) -> None:
  """Starts the work directory, or checks that it was started with these settings (labels of two teachers or
  thresholds must not mix in one dataset)."""
  paths.work.mkdir(parents=True, exist_ok=True)
  if not paths.settings.exists():
    paths.settings.write_text(json.dumps(settings, indent=2))
    return
  before = json.loads(paths.settings.read_text())
  differ = [f"{k}={before.get(k)!r} (now {v!r})" for k, v in settings.items() if before.get(k) != v]
  if differ:
    raise PseudoLabelError(f"{paths.work} was started with {', '.join(differ)}: rerun with the same teacher "
                           "checkpoint (--checkpoint), threshold and config, or pass --overwrite to start over")


# ---------------------------------------------------------------------------------------------------------------
# Phrases per record, and the evaluation batches of a chunk of records.

def raw_source(dataset: sources.Dataset):
  """The split's records with the image left encoded: captions to parse and image bytes to store, read cheaply."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(str(dataset.directory))
  return builder.as_data_source(split=dataset.split, decoders={"image": tfds.decode.SkipDecoding()})


def chunk_phrases(raw, indices: Iterable[int], tokenizer, config) -> list[dict]:
  """Per record: `found` noun phrases, and the `spans` of those the teacher reads (the first max_phrases whose
  tokens fit the query length: what its evaluation encoding keeps), as lists (they are broadcast as JSON); a
  record that cannot be read is `skipped`, with the reason."""
  c = config.data
  captions, unreadable = [], {}
  for k, i in enumerate(indices):
    try:
      captions.append(records.text(raw[int(i)]["caption"]))
    except Exception as e:  # noqa: BLE001 - whatever a damaged record raises
      logging.warning("record %d cannot be read: %s: %s", i, type(e).__name__, e)
      captions.append("")
      unreadable[k] = f"unreadable record ({type(e).__name__})"
  out = []
  for k, (caption, spans) in enumerate(zip(captions, noun_phrases.noun_phrases_batch(captions))):
    if k in unreadable:
      out.append(dict(found=0, spans=[], skipped=unreadable[k]))
      continue
    visible = []
    if spans:
      tok = tokenizer.encode(caption, config.model.max_query_len)
      live = prompts.token_map_from_spans(tok.offsets, [[s] for s in spans[:c.max_phrases]],
                                          config.model.max_query_len).sum(1) > 0
      visible = [[int(b), int(e)] for (b, e), ok in zip(spans, live) if ok]
    out.append(dict(found=len(spans), spans=visible))
  return out


UNREADABLE_CAPTION, UNREADABLE_SPANS = "image", [[0, 5]]


class _Indexed:
  """The records of a `sources.Subset` with `image_id` set to each record's index in the split, so that
  predict_split's image ids name records. A record whose image cannot be decoded becomes a small blank image with
  image_id -(index + 1): the teacher runs on it like on any row (so a batch never lacks a usable record, on any
  process), and the negative id, gathered with the detections, tells process 0 to count the record as skipped."""

  def __init__(self, subset: sources.Subset):
    self.subset = subset

  def __len__(self) -> int:
    return len(self.subset)

  def __getitem__(self, i: int) -> dict:
    index = int(self.subset.indices[i])
    try:
      record = dict(self.subset[i])
    except Exception as e:  # noqa: BLE001 - whatever the image decoder raises for a damaged record
      logging.warning("record %d cannot be read: %s: %s", index, type(e).__name__, e)
      return dict(image=np.zeros((8, 8, 3), np.uint8), image_id=-(index + 1), caption=UNREADABLE_CAPTION,
                  boxes=np.zeros((0, 4), np.float32), phrase_spans=np.zeros((0, 2), np.int32))
    record["image_id"] = index
    return record


def chunk_batches(config, tokenizer, dataset: sources.Dataset, spans: dict[int, list]) -> Callable:
  """`rows -> evaluation batches` of the records `spans` names (record index -> its phrase spans), prompted with
  their phrases: the evaluation pipeline over these records only (`make_pipeline(dataset=...)`)."""

  def prompter(record: dict) -> prompting.Prompt:
    index = int(record["image_id"])
    phrase_spans = np.asarray(spans[index] if index >= 0 else UNREADABLE_SPANS, np.int32).reshape(-1, 2)
    return prompting.caption_prompt(dict(record, phrase_spans=phrase_spans,
                                         span_phrase=np.arange(len(phrase_spans), dtype=np.int32)))

  def make(rows: tuple[int, int]):
    return pipeline.make_pipeline(config.data, dataset.split, tokenizer, train=False, seed=config.seed,
                                  global_batch_size=config.eval.global_batch_size, rows=rows,
                                  max_query_len=config.model.max_query_len, prompter=prompter,
                                  dataset=dataset.subset(sorted(spans), wrap=_Indexed))
  return make


NO_DETECTIONS = dict(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                     category_ids=np.zeros(0, np.int64))


def record_line(index: int, phrases: dict, det: dict, threshold: float, image_hw) -> dict:
  """The labels-file line of one record from its detections (predict_split's: boxes in original pixels, scores,
  category_ids = phrase index + 1)."""
  scores = np.asarray(det["scores"], np.float32)
  keep = scores >= threshold
  boxes, (kept_scores, kept_phrases), degenerate = transforms.sanitize_boxes(
      det["boxes"][keep], image_hw, scores[keep], np.asarray(det["category_ids"])[keep] - 1)
  hist = np.bincount(np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1), minlength=SCORE_BINS)
  return dict(index=int(index), found=int(phrases["found"]), spans=phrases["spans"],
              boxes=np.round(boxes.astype(np.float64), 2).tolist(),
              scores=np.round(kept_scores.astype(np.float64), 4).tolist(),
              phrases=[int(p) for p in kept_phrases], candidates=[[int(b), int(hist[b])] for b in np.nonzero(hist)[0]],
              degenerate=int(degenerate))


# ---------------------------------------------------------------------------------------------------------------
# Labelling (every process) and merging (process 0).

def _share(obj):
  """Process 0's `obj` (JSON-able) on every process."""
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
  buf = np.zeros(n, np.uint8)
  buf[:len(data)] = data
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode("utf-8"))


def label(predict, config, tokenizer, mesh, dataset: sources.Dataset, paths: Paths, *, threshold: float,
          settings: dict, chunk: int | None = None, progress: bool = True) -> dict:
  """Labels every record of `dataset` that the labels file does not hold yet (module docstring); call on every
  process. `predict(global batch) -> detections` is the teacher. Returns {"todo": records without a line at the
  start, "labelled": records the teacher labelled in this call}."""
  from glipjax.evaluators import common
  chief = jax.process_index() == 0
  error = None
  if chief:
    try:
      check_settings(paths, settings)
    except PseudoLabelError as e:
      error = str(e)
  error = _share(error)
  if error:
    raise PseudoLabelError(error)
  n = len(dataset.source)
  done = read_labels(paths.labels, n) if chief else {}
  todo = np.array(_share([i for i in range(n) if i not in done] if chief else None), np.int64)
  chunk = chunk or CHUNK_BATCHES * config.eval.global_batch_size
  chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
  raw = raw_source(dataset) if chief else None
  sizes = dataset.image_sizes
  bar = tqdm(total=n, initial=n - len(todo), desc=f"pseudo-labelling {dataset.name}/{dataset.split}", unit="image",
             disable=not (progress and chief))
  labelled = 0
  out = open(paths.labels, "a", encoding="utf-8") if chief else None

  def write(line: dict) -> None:
    if out is not None:
      out.write(json.dumps(line, ensure_ascii=False) + "\n")
      out.flush()  # a kill loses at most the line being written (dropped on restart)
    bar.update(1)

  with concurrent.futures.ThreadPoolExecutor(1) as parser:
    parse = lambda k: parser.submit(chunk_phrases, raw, chunks[k], tokenizer, config) if chief else None
    pending = parse(0) if chunks else None
    try:
      for k, indices in enumerate(chunks):
        phrases = dict(zip(indices.tolist(), _share(pending.result() if chief else None)))
        pending = parse(k + 1) if k + 1 < len(chunks) else None  # the next chunk's, while the teacher runs
        for i in indices.tolist():
          if "skipped" in phrases[i]:
            write(dict(index=i, skipped=phrases[i]["skipped"]))
          elif not phrases[i]["spans"]:
            write(record_line(i, phrases[i], NO_DETECTIONS, threshold, sizes[i]))
        prompted = {i: p["spans"] for i, p in phrases.items() if p["spans"]}
        seen = set()
        if prompted:
          for i, det in common.predict_split(predict, config, tokenizer, mesh, prompter=None,
                                             batches=chunk_batches(config, tokenizer, dataset, prompted)):
            if i < 0:  # _Indexed's stand-in for an image that cannot be decoded
              seen.add(-i - 1)
              write(dict(index=-i - 1, skipped="image could not be decoded"))
              continue
            seen.add(i)
            labelled += 1
            write(record_line(i, phrases[i], det, threshold, sizes[i]))
        for i in sorted(set(prompted) - seen):  # the pipeline's transform skipped it (logged)
          write(dict(index=i, skipped="the input pipeline could not use the record (see the warnings)"))
    finally:
      bar.close()
      if out is not None:
        out.close()
  return dict(todo=len(todo), labelled=labelled)


class _Stats(sources.Stats):
  """Preparation statistics plus the pseudo-labelling summary (stored in the metadata as `pseudo_label`)."""

  def __init__(self, summary: dict):
    super().__init__()
    self.summary = summary

  def as_dict(self) -> dict:
    return dict(super().as_dict(), pseudo_label=self.summary)


def _quantiles_from_histogram(hist: np.ndarray) -> dict:
  """Quantiles of scores known by histogram bins over [0, 1]: each the centre of the bin where it falls."""
  total = hist.sum()
  if total == 0:
    return {}
  cum = np.cumsum(hist)
  return {f"p{round(q * 100)}": round((int(np.searchsorted(cum, max(q * total, 1))) + 0.5) / len(hist), 4)
          for q in QUANTILES}


def summarize(labels: dict[int, dict], num_records: int, threshold: float) -> dict:
  """The statistics of a complete labels file (module docstring)."""
  lines = [labels[i] for i in range(num_records)]
  ok = [l for l in lines if "skipped" not in l]
  kept = np.array([s for l in ok for s in l["scores"]], np.float64)
  candidates = np.zeros(SCORE_BINS, np.int64)
  for l in ok:
    for b, c in l["candidates"]:
      candidates[b] += c
  edges = np.linspace(0, 1, 21)  # histograms of 20 bins of 0.05
  return dict(
      threshold=threshold, images=num_records, images_skipped=len(lines) - len(ok),
      captions_without_phrase=sum(1 for l in ok if l["found"] == 0),
      images_with_box=sum(1 for l in ok if l["boxes"]),
      images_dropped_without_box=sum(1 for l in ok if not l["boxes"]),
      phrases_found=sum(l["found"] for l in ok),
      phrases_unread=sum(l["found"] - len(l["spans"]) for l in ok),  # beyond max_phrases or the query length
      phrases_prompted=sum(len(l["spans"]) for l in ok),
      phrases_with_box=sum(len(set(l["phrases"])) for l in ok),
      boxes_kept=len(kept), boxes_dropped_degenerate=sum(l.get("degenerate", 0) for l in ok),
      kept_scores=dict(count=len(kept), mean=round(float(kept.mean()), 4) if len(kept) else None,
                       quantiles={f"p{round(q * 100)}": round(float(v), 4)
                                  for q, v in zip(QUANTILES, np.quantile(kept, QUANTILES))} if len(kept) else {},
                       histogram=dict(edges=edges.round(2).tolist(),
                                      counts=np.histogram(kept, bins=edges)[0].tolist())),
      candidate_scores=dict(count=int(candidates.sum()), quantiles=_quantiles_from_histogram(candidates),
                            quantile_resolution=1 / SCORE_BINS,
                            histogram=dict(edges=edges.round(2).tolist(),
                                           counts=candidates.reshape(20, -1).sum(1).tolist())))


def merge(dataset: sources.Dataset, paths: Paths, out_name: str, data_dir, settings: dict) -> dict:
  """Process 0: the complete labels file -> the prepared grounding dataset and the statistics files. Returns the
  statistics."""
  n = len(dataset.source)
  labels = read_labels(paths.labels, n)
  missing = [i for i in range(n) if i not in labels]
  if missing:
    raise PseudoLabelError(f"{paths.labels} has no line for {len(missing)} record(s) (e.g. {missing[:3]}): run "
                           "the same command again to label them")
  summary = dict(summarize(labels, n, settings["threshold"]), teacher=settings["teacher"], step=settings["step"],
                 noun_phrases=settings["noun_phrases"], source=f"{dataset.name}/{dataset.split}")
  paths.stats.write_text(json.dumps(summary, indent=2))
  if not summary["images_with_box"]:
    raise PseudoLabelError(f"no image has a box scoring >= {settings['threshold']} (score distribution in "
                           f"{paths.stats}): rerun with a lower --threshold and --overwrite")
  stats = _Stats(summary)
  raw = raw_source(dataset)

  def stored():
    for i in range(n):
      line = labels[i]
      if "skipped" in line:
        stats.count("images skipped: unreadable record", where=f"record {i}")
        continue
      if not line["boxes"]:
        stats.count("images dropped: no phrase to prompt" if not line["spans"] else "images dropped: no box at "
                    "or above the threshold", where=f"record {i}")
        continue
      used = sorted(set(line["phrases"]))
      where = {p: k for k, p in enumerate(used)}
      r = raw[i]
      yield records.stored(
          image=r["image"], image_id=int(r["image_id"]), original_image_id=int(r["original_image_id"]),
          sentence_id=int(r["sentence_id"]), file_name=records.text(r["file_name"]),
          caption=records.text(r["caption"]),
          boxes=line["boxes"], phrase_spans=[line["spans"][p] for p in used], span_phrase=np.arange(len(used)),
          box_phrase=[where[p] for p in line["phrases"]])

  sources.write(out_name, dataset.split, data_dir, FORMAT, [], stored(), stats, overwrite=True,
                annotations=str(paths.labels))
  return summary


def format_summary(summary: dict, directory) -> str:
  k, c = summary["kept_scores"], summary["candidate_scores"]
  q = lambda d: ", ".join(f"{name} {v:.3f}" for name, v in d.items()) or "none"
  return "\n".join([
      f"pseudo-labelled {summary['source']} with {summary['teacher']} (step {summary['step']}) -> {directory}",
      f"  images: {summary['images']}, kept with boxes: {summary['images_with_box']}, dropped without a box: "
      f"{summary['images_dropped_without_box']} (of which captions with no phrase: "
      f"{summary['captions_without_phrase']}), skipped unreadable: {summary['images_skipped']}",
      f"  phrases found: {summary['phrases_found']}, prompted: {summary['phrases_prompted']} (beyond the teacher's "
      f"max_phrases or query length: {summary['phrases_unread']}), with a kept box: {summary['phrases_with_box']}",
      f"  boxes kept (score >= {summary['threshold']}): {summary['boxes_kept']}",
      f"  kept scores: {q(k['quantiles'])}",
      f"  all candidate scores ({c['count']}): {q(c['quantiles'])}"])


# ---------------------------------------------------------------------------------------------------------------
# The command.

def run(teacher: str, dataset_name: str, data_dir: str, out_name: str, *, split: str = "train",
        threshold: float = 0.5, checkpoint: str | None = None, overrides: dict | None = None,
        chunk: int | None = None, overwrite: bool = False, progress: bool = True) -> dict | None:
  """The command's work on this process: returns the statistics on process 0 (None on the others)."""
  from glipjax import config_utils, distributed, runtime
  from glipjax.predictor import Predictor
  if not 0 < threshold <= 1:
    raise PseudoLabelError(f"--threshold must be in (0, 1], got {threshold}")
  if not out_name or "/" in out_name or out_name.startswith(sources.BUILTIN) or out_name == dataset_name:
    raise PseudoLabelError(f"invalid --out_name {out_name!r}: a new plain dataset name, e.g. {dataset_name}_pseudo")
  if split not in sources.SPLITS:
    raise PseudoLabelError(f"unknown split {split!r}; use one of {', '.join(sources.SPLITS)}")
  if chunk is not None and chunk < 1:
    raise PseudoLabelError(f"--chunk must be a positive number of records, got {chunk}")
  dataset = sources.open_dataset(data_dir, dataset_name, split)
  if dataset.kind != "captions":
    raise PseudoLabelError(f"dataset {dataset_name!r} is a {dataset.kind} dataset: pseudo-labelling reads image-"
                           "caption pairs prepared with `python -m glipjax.data.prepare --format captions`")
  if not len(dataset.source):
    raise PseudoLabelError(f"dataset {dataset_name!r} split {split!r} holds no records")
  workdir = pathlib.Path(teacher)
  config = config_utils.apply_overrides(config_utils.load_workdir_config(workdir), overrides or {})
  if config.data.tokenizer == "sentencepiece" and config.data.sentencepiece_vocab_size > 0 and \
      not (workdir / "tokenizer.model").exists():
    raise FileNotFoundError(f"{workdir / 'tokenizer.model'} not found: the teacher's tokenizer must come with it")
  paths = Paths.of(data_dir, out_name, split)
  if jax.process_index() == 0 and overwrite and paths.split_dir.exists():
    shutil.rmtree(paths.work, ignore_errors=True)
    shutil.rmtree(paths.output, ignore_errors=True)
  distributed.barrier("pseudo_label_overwrite")
  if paths.output.exists():
    raise PseudoLabelError(f"{paths.output} already exists (statistics: {paths.stats}); pass --overwrite to label "
                           "it again")
  noun_phrases.version()  # the parser loads (or says what to install) before the teacher does
  predictor = Predictor(workdir, config=config, checkpoint=checkpoint)
  tokenizer = runtime.prepare_tokenizer(predictor.config, workdir)
  settings = run_settings(dataset, teacher, predictor.step, threshold, predictor.config)
  with predictor.context():
    label(predictor, predictor.config, tokenizer, predictor.mesh, dataset, paths, threshold=threshold,
          settings=settings, chunk=chunk, progress=progress)
  summary = None
  error = None
  if jax.process_index() == 0:
    try:
      summary = merge(dataset, paths, out_name, data_dir, settings)
    except (PseudoLabelError, sources.PrepareError) as e:
      error = str(e)
  error = _share(error)  # the other processes wait for the merge here
  if error:
    raise PseudoLabelError(error)
  return summary


def main(argv=None) -> int:
  from glipjax import config_utils, distributed
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--teacher", required=True, help="the teacher's training (or converted) workdir")
  p.add_argument("--dataset", required=True, help="a prepared captions dataset")
  p.add_argument("--data_dir", required=True, help="where prepared datasets live; the output is written there too")
  p.add_argument("--out_name", required=True, help="the pseudo-labelled grounding dataset's name")
  p.add_argument("--split", default="train", help="the split to label (the output's split too)")
  p.add_argument("--threshold", type=float, default=0.5, help="keep detections scoring at least this (GLIP: 0.5)")
  p.add_argument("--checkpoint", default=None, help="a checkpoints folder or one step of one (default: the "
                 "teacher's newest intact checkpoint)")
  p.add_argument("--chunk", type=int, default=None, help="records per chunk (default: 32 global evaluation batches)")
  p.add_argument("--overwrite", action="store_true", help="discard earlier labels and an existing output")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  p.add_argument("--coordinator", default=None, help=f"host:port of process 0 (or ${distributed.ENV_COORDINATOR})")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  try:
    rest, overrides = config_utils.split_config_flags(list(sys.argv[1:] if argv is None else argv))
  except ValueError as e:
    p.error(str(e))
  args = p.parse_args(rest)
  logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    summary = run(args.teacher, args.dataset, args.data_dir, args.out_name, split=args.split,
                  threshold=args.threshold, checkpoint=args.checkpoint, overrides=overrides, chunk=args.chunk,
                  overwrite=args.overwrite, progress=not args.no_progress)
  except KeyError as e:  # an unknown config key
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  if summary is not None:
    print(format_summary(summary, Paths.of(args.data_dir, args.out_name, args.split).output))
    print(f"statistics: {Paths.of(args.data_dir, args.out_name, args.split).stats}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
