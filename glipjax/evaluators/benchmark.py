"""The papers' benchmarks: one prepared dataset (or ODinW suite) evaluated under one protocol, scored against the
original annotation files with the code `glipjax.score` uses (`glipjax.evaluate --dataset ... --protocol ...`,
and `eval.benchmarks` during training).

Each protocol is a module of this folder with `run_benchmark(job) -> Result`: it prompts the dataset the way
the protocol prompts it, turns the detections into the reference format, and scores them.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from typing import Callable

import ml_collections
import numpy as np
from PIL import Image

from glipjax import config_utils
from glipjax.data import pipeline, records as data_records, sources

PROTOCOLS = ("coco", "lvis", "odinw", "flickr30k", "refcoco")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """What to evaluate: a prepared dataset (for `odinw`: a suite of configs/odinw.py or a comma-separated list of
  prepared names), its split, the protocol, and where the annotation files are when not where preparation found
  them."""
  dataset: str
  protocol: str
  split: str = "validation"
  annotations: str = ""      # default: the file the dataset was prepared from
  flickr_entities: str = ""  # Flickr30k Entities' folder (Sentences/, Annotations/); default: beside annotations

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not self.dataset:
      raise ValueError(f"the {self.protocol} benchmark names no dataset")

  @property
  def key(self) -> str:
    """Its metrics' prefix in training logs and `checkpoint.best_metric`, e.g. 'lvis_minival' (+ '_test')."""
    return self.dataset if self.split == "validation" else f"{self.dataset}_{self.split}"

  @classmethod
  def from_config(cls, entry) -> "Benchmark":
    """An `eval.benchmarks` entry: a dict (dataset, protocol, split, annotations, flickr_entities) or a
    (dataset, protocol[, split]) tuple."""
    if isinstance(entry, (dict, ml_collections.ConfigDict)):
      entry = dict(entry)
      unknown = set(entry) - {f.name for f in dataclasses.fields(cls)}
      if unknown:
        raise ValueError(f"eval.benchmarks entry {entry!r}: unknown keys {sorted(unknown)}")
      return cls(**entry)
    try:
      return cls(*entry)
    except TypeError as e:
      raise ValueError(f"eval.benchmarks entries are (dataset, protocol[, split]) or dicts; got {entry!r}") from e


@dataclasses.dataclass
class Job:
  """A benchmark with what runs it: `predict(global batch) -> detections`, the run's config (its data section
  pointed at the dataset: `config_for`), tokenizer and mesh."""
  benchmark: Benchmark
  predict: Callable
  config: ml_collections.ConfigDict
  tokenizer: object
  mesh: object
  progress: bool = True

  @property
  def split(self) -> str:
    return self.benchmark.split

  def dataset(self, name: str | None = None) -> sources.Dataset:
    return sources.open_dataset(self.config.data.data_dir, name or self.benchmark.dataset, self.split)

  def on(self, name: str) -> "Job":
    """The same job on another prepared dataset (ODinW's members)."""
    return dataclasses.replace(self, benchmark=dataclasses.replace(self.benchmark, dataset=name),
                               config=config_for(self.config, name))

  def annotations(self, dataset: sources.Dataset) -> pathlib.Path:
    """The annotation file scored against: the benchmark's, else the one `dataset` was prepared from."""
    path = self.benchmark.annotations or dataset.annotations
    if not path:
      raise FileNotFoundError(f"dataset {dataset.name!r} does not record its annotation file (prepared before "
                              "glipjax recorded it): pass --annotations")
    if not pathlib.Path(path).exists():
      raise FileNotFoundError(f"the annotation file of {dataset.name!r}, {path}, does not exist (moved?): pass "
                              "--annotations")
    return pathlib.Path(path)


@dataclasses.dataclass
class Result:
  metrics: dict          # flat {name: float} (ODinW: also per dataset, 'name/AP')
  predictions: object    # JSON-able, in the protocol's reference format
  pictures: dict = dataclasses.field(default_factory=dict)  # file name -> PIL image
  info: dict = dataclasses.field(default_factory=dict)      # what the numbers are, e.g. LVIS's kind of AP


def write_result(result: Result, out: pathlib.Path, summary: dict) -> None:
  """Writes on process 0: the metrics (`summary`) to `out`, the predictions and pictures beside it."""
  import jax
  if jax.process_index() != 0:
    return
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(summary, indent=2) + "\n")
  out.with_name(out.stem + "_predictions.json").write_text(json.dumps(result.predictions))
  if result.pictures:
    folder = out.with_name(out.stem + "_pictures")
    folder.mkdir(exist_ok=True)
    for name, picture in result.pictures.items():
      picture.save(folder / name)


def config_for(config, dataset: str, data_dir: str | None = None):
  """`config` evaluating `dataset` (its data section's eval_source, and data_dir when given)."""
  overrides = {"data.eval_source": dataset}
  if data_dir:
    overrides["data.data_dir"] = str(data_dir)
  return config_utils.apply_overrides(config, overrides)


def run(predict, config, tokenizer, mesh, benchmark: Benchmark, *, progress: bool = True) -> Result:
  """Evaluates `benchmark` with `predict(global batch) -> detections` on every process; each process gets the
  same result (predictions are gathered)."""
  module = importlib.import_module(f"glipjax.evaluators.{benchmark.protocol}")
  job = Job(benchmark, predict, config_for(config, benchmark.dataset.split(",")[0]), tokenizer, mesh, progress)
  return module.run_benchmark(job)


def first_records(job: Job, n: int) -> list[dict]:
  """The split's first `n` records with their images (for pictures)."""
  source = pipeline.eval_dataset(job.config.data, job.split).source
  return [data_records.decode(source[i]) for i in range(min(n, len(source)))]


def xyxy_continuous(boxes: np.ndarray) -> list[list[float]]:
  """Pixel-inclusive xyxy (glipjax's boxes) -> continuous coordinates (x2 = x + w), as MDETR's evaluators
  compare boxes."""
  return [[float(b[0]), float(b[1]), float(b[2] + 1), float(b[3] + 1)] for b in np.asarray(boxes).reshape(-1, 4)]


def pictures(job: Job, detections: dict, names_of: Callable[[dict], dict], prefix: str) -> dict[str, Image.Image]:
  """A few of the split's images with their detections, labelled by `names_of(record)` {category id: name}."""
  from glipjax.evaluators import common
  cfg = job.config.eval
  out = {}
  for record in first_records(job, cfg.num_pictures):
    det = detections.get(record["image_id"])
    if det is not None:
      out[f"{prefix}_{record['image_id']}.png"] = common.draw(record["image"], det, names_of(record),
                                                              cfg.picture_score_thresh)
  return out
