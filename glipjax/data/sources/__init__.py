"""Data sources: local annotation files in a known format -> canonical records (glipjax/data/records.py) -> one
TFDS dataset (ArrayRecord) per name and split, which the pipeline reads back with `tfds.data_source`.

  python -m glipjax.data.prepare --format coco --annotations instances_val2017.json --images val2017 \
      --name coco --split validation --data_dir ~/tensorflow_datasets

Each format is one module here with `read(annotations, images, *, label_map, stats)` returning the dataset's
categories and an iterator of stored records; the embedded default (`synthetic_grounding`) is a TFDS builder of
its own. A prepared dataset lives in `<data_dir>/<name>/<split>/<version>/`, its categories and preparation
statistics in the dataset's metadata.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import io
import json
import logging
import pathlib
import shutil
from typing import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.dataset_builders import adhoc_builder

from glipjax.data import records

VERSION = "1.0.0"
FORMATS = {"coco": "coco_json", "lvis": "coco_json", "mdetr": "mdetr_json", "odvg": "odvg_jsonl",
           "captions": "captions"}
SPLITS = ("train", "validation", "test")
BUILTIN = "synthetic_grounding"  # name[/builder config], e.g. "synthetic_grounding/tiny"
SIZES_FILE = "{split}_image_sizes.npy"  # [N, 2] (height, width) per record, beside the records (for buckets)


class PrepareError(ValueError):
  """Annotation files that cannot be prepared: the message names the file and the record."""


@dataclasses.dataclass(frozen=True)
class Category:
  id: int             # the id in the annotation file
  name: str           # as prompts write it (GLIP's cleaning: no '_' or parenthesised parts)
  frequency: str = ""  # LVIS: 'r', 'c' or 'f'


class Stats:
  """What preparation kept, repaired and skipped, by reason, with the first few records named per reason."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = {}

  def count(self, reason: str, n: int = 1, where: str | None = None) -> None:
    if n <= 0:
      return
    self.counts[reason] += n
    if where is not None and len(self.examples.setdefault(reason, [])) < 3:
      self.examples[reason].append(where)

  def as_dict(self) -> dict:
    return dict(counts=dict(sorted(self.counts.items())), examples=self.examples)


@dataclasses.dataclass
class Dataset:
  """A prepared split: random-access `source` of stored records, and what it holds."""
  name: str
  split: str
  source: object
  categories: list[Category]
  kind: str            # 'detection', 'grounding', 'captions' or 'synthetic'
  statistics: dict
  directory: pathlib.Path | None = None  # the prepared version directory
  annotations: str = ""  # the annotation file it was prepared from (absolute; evaluators score against it)

  @property
  def category_names(self) -> list[str]:
    return [c.name for c in self.categories]

  @functools.cached_property
  def image_sizes(self) -> np.ndarray:
    """[N, 2] (height, width) of each record's image, in record order: the file preparation wrote, else read
    once from the records (decoding every image) and kept beside them."""
    path = self.directory / SIZES_FILE.format(split=self.split) if self.directory is not None else None
    if path is not None and path.exists():
      sizes = np.load(path)
      if len(sizes) == len(self.source):
        return sizes
    logging.info("reading the image sizes of %s/%s (%d records) once", self.name, self.split, len(self.source))
    sizes = np.array([np.asarray(self.source[i]["image"]).shape[:2] for i in range(len(self.source))],
                     np.int32).reshape(-1, 2)
    if path is not None:
      try:
        np.save(path, sizes)
      except OSError as e:  # a read-only dataset directory: read them again next time
        logging.warning("cannot cache image sizes at %s: %s", path, e)
    return sizes


  def subset(self, indices, wrap=None) -> "Dataset":
    """The records at `indices`, in that order, as a dataset of their own (a few-shot sample, say); `wrap` (a
    `Subset` -> random-access source) may decorate its records."""
    indices = np.asarray(indices, np.int64)
    source = Subset(self.source, indices)
    out = dataclasses.replace(self, source=wrap(source) if wrap else source, directory=None)
    if self.directory is not None or "image_sizes" in self.__dict__:  # known without decoding: carry them over
      out.__dict__["image_sizes"] = self.image_sizes[indices]     # (where cached_property keeps its value)
    return out


class Subset:
  """Records `indices` of a random-access source, as a random-access source."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.source[int(self.indices[i])]


def image_hw(image) -> tuple[int, int]:
  """(height, width) of an encoded image (from its header only) or of a decoded array."""
  if isinstance(image, (bytes, bytearray)):
    with Image.open(io.BytesIO(image)) as im:
      return im.height, im.width
  shape = np.shape(image)
  return int(shape[0]), int(shape[1])


def reader(fmt: str):
  if fmt not in FORMATS:
    raise PrepareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
  return importlib.import_module(f"glipjax.data.sources.{FORMATS[fmt]}")


def load_json(path: pathlib.Path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise PrepareError(f"annotation file {path} does not exist") from e
  except json.JSONDecodeError as e:
    raise PrepareError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
  except UnicodeDecodeError as e:
    raise PrepareError(f"{path}: not UTF-8 text ({e})") from e


def iter_jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
  """(line number, object) per non-empty line; a malformed line is an error naming the file and the line."""
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError as e:
    raise PrepareError(f"annotation file {path} does not exist") from e
  with f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise PrepareError(f"{path}: malformed JSON on line {n} column {e.colno}: {e.msg}") from e
      if not isinstance(obj, dict):
        raise PrepareError(f"{path}: line {n} is not a JSON object")
      yield n, obj


def load_label_map(path: str | pathlib.Path | None) -> dict[int, str] | None:
  """{category id: name} from a JSON object ({"1": "person", ...}) or list of names (ids from 0)."""
  if not path:
    return None
  data = load_json(pathlib.Path(path))
  if isinstance(data, list):
    data = dict(enumerate(data))
  if not isinstance(data, dict):
    raise PrepareError(f"{path}: a label map is a JSON object {{id: name}} or a list of names")
  try:
    return {int(k): str(v) for k, v in data.items()}
  except ValueError as e:
    raise PrepareError(f"{path}: label map keys must be integer category ids ({e})") from e


class _PreparedBuilder(adhoc_builder.AdhocBuilder, skip_registration=True):
  """AdhocBuilder whose DatasetInfo carries our metadata (categories, statistics), filled while generating."""

  def __init__(self, *, metadata: tfds.core.MetadataDict, **kwargs):
    self._glipjax_metadata = metadata
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self._description, features=self._feature_spec,
                                 metadata=self._glipjax_metadata, disable_shuffling=True)


def split_dir(data_dir: str | pathlib.Path, name: str, split: str) -> pathlib.Path:
  return pathlib.Path(data_dir).expanduser() / name / split


def write(name: str, split: str, data_dir: str | pathlib.Path, fmt: str, categories: list[Category],
          stored: Iterable[dict], stats: Stats, *, overwrite: bool = False,
          annotations: str | pathlib.Path = "") -> pathlib.Path:
  """Stores `stored` records as the TFDS dataset `name`/`split`; returns its directory."""
  if split not in SPLITS:
    raise PrepareError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  if not name or "/" in name or name.startswith(BUILTIN):
    raise PrepareError(f"invalid dataset name {name!r}: a plain name such as 'coco' or 'o365'")
  target = split_dir(data_dir, name, split)
  if (target / VERSION).exists():
    if not overwrite:
      raise PrepareError(f"{target / VERSION} already exists; pass --overwrite to prepare it again")
    shutil.rmtree(target / VERSION)
  metadata = tfds.core.MetadataDict(
      format=fmt, kind=_kind(fmt), categories=[dataclasses.asdict(c) for c in categories],
      annotations=str(pathlib.Path(annotations).expanduser().absolute()) if annotations else "")
  totals = collections.Counter()
  sizes: list[tuple[int, int]] = []

  def examples():
    for r in stored:
      sizes.append(image_hw(r["image"]))
      totals["images"] += 1
      totals["boxes"] += len(r["boxes"])
      totals["phrases"] += records.num_phrases(dict(span_phrase=r["span_phrase"]))
      yield r["image_id"] if r["sentence_id"] < 0 else f"{r['image_id']}_{r['sentence_id']}", r
    metadata["statistics"] = dict(dict(totals), **stats.as_dict())

  builder = _PreparedBuilder(name=name, version=VERSION, features=records.FEATURES, config=split,
                             split_datasets={split: examples()}, data_dir=str(pathlib.Path(data_dir).expanduser()),
                             description=f"glipjax: {fmt} files prepared as canonical records", metadata=metadata)
  builder.download_and_prepare(file_format="array_record")
  # Shuffling is disabled, so records are stored in the order generated: sizes[i] is record i's.
  np.save(pathlib.Path(builder.data_dir) / SIZES_FILE.format(split=split), np.asarray(sizes, np.int32).reshape(-1, 2))
  return pathlib.Path(builder.data_dir)


def _kind(fmt: str) -> str:
  return {"coco": "detection", "lvis": "detection", "odvg": "grounding", "mdetr": "grounding",
          "pseudo": "grounding"}.get(fmt, fmt)  # pseudo: a teacher's boxes on captions (glipjax/pseudo_label.py)


def prepare_builtin(data_dir: str | pathlib.Path, name: str) -> None:
  """Builds the embedded default on first use; prepared datasets need nothing (they are checked when opened)."""
  if name.split("/")[0] == BUILTIN:
    from glipjax.data.sources import synthetic_grounding
    synthetic_grounding.prepare(data_dir, name)


def open_dataset(data_dir: str | pathlib.Path, name: str, split: str) -> Dataset:
  """A prepared split (or the embedded default, `synthetic_grounding[/config]`), for random access."""
  if name.split("/")[0] == BUILTIN:
    from glipjax.data.sources import synthetic_grounding
    return synthetic_grounding.open_dataset(data_dir, name, split)
  base = split_dir(data_dir, name, split)
  versions = sorted(p for p in base.glob("*.*.*") if (p / "dataset_info.json").exists()) if base.exists() else []
  if not versions:
    have = sorted(p.name for p in base.parent.glob("*") if p.is_dir() and not p.name.startswith("."))
    hint = f" (it has: {', '.join(have)})" if have else ""
    raise FileNotFoundError(
        f"dataset {name!r} split {split!r} is not prepared under {data_dir}{hint}. Prepare it with: python -m "
        f"glipjax.data.prepare --format FORMAT --annotations FILE --images DIR --name {name} --split {split} "
        f"--data_dir {data_dir}")
  builder = tfds.builder_from_directory(str(versions[-1]))
  meta = builder.info.metadata or {}
  cats = [Category(int(c["id"]), str(c["name"]), str(c.get("frequency", ""))) for c in meta.get("categories", [])]
  return Dataset(name, split, builder.as_data_source(split=split), cats, str(meta.get("kind", "detection")),
                 dict(meta.get("statistics", {})), pathlib.Path(builder.data_dir), str(meta.get("annotations", "")))
