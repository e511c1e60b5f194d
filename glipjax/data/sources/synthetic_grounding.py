"""The embedded default dataset, `synthetic_grounding`: a TFDS builder generating coloured-shape scenes
(glipjax/data/synthetic.py) deterministically from a seed, stored as canonical records.

  from glipjax.data.sources import synthetic_grounding
  synthetic_grounding.prepare("runs/tfds", "default")      # builds the ArrayRecord files once
  sources.open_dataset("runs/tfds", "synthetic_grounding", "train")   # name[/config]: what the pipeline reads
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from glipjax.data import records, synthetic
from glipjax.data.sources import BUILTIN, Category, Dataset


@dataclasses.dataclass
class SyntheticGroundingConfig(tfds.core.BuilderConfig):
  seed: int = 0
  image_size: tuple[int, int] = (128, 128)
  num_train: int = 4000
  num_validation: int = 200
  max_objects: int = 4
  relation_prob: float = 0.25


class SyntheticGrounding(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes, every one boxed with its kind, and captions naming some of them."""

  VERSION = tfds.core.Version("3.0.0")
  RELEASE_NOTES = {"2.0.0": "every object boxed with its kind (labels 1..15); phrase_labels; box_phrase -1 for "
                            "objects the caption leaves out",
                   "3.0.0": "the canonical record schema shared with prepared datasets (glipjax/data/records.py)"}
  BUILDER_CONFIGS = [
      SyntheticGroundingConfig(name="default", description="128x128, 4000 train / 200 validation"),
      SyntheticGroundingConfig(name="tiny", description="for tests", image_size=(64, 64), num_train=32,
                               num_validation=8),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=records.FEATURES, description=__doc__,
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {"train": self._generate_examples(c.seed, c.num_train, 0),
            "validation": self._generate_examples(c.seed + 1, c.num_validation, 1_000_000)}

  def _generate_examples(self, seed: int, num: int, first_id: int):
    c = self.builder_config
    for i in range(num):
      rng = np.random.default_rng([seed, i])  # per-example stream: order-independent and reproducible
      scene = synthetic.generate_scene(rng, c.image_size, max_objects=c.max_objects, relation_prob=c.relation_prob)
      yield i, records.stored(image=scene["image"], image_id=first_id + i, caption=scene["caption"],
                              boxes=scene["boxes"], labels=scene["labels"], box_phrase=scene["box_phrase"],
                              phrase_spans=scene["phrase_spans"], phrase_labels=scene["phrase_labels"])


def _config_name(name: str) -> str:
  base, _, config = name.partition("/")
  if base != BUILTIN:
    raise ValueError(f"{name!r} is not the embedded dataset {BUILTIN}[/config]")
  config = config or "default"
  known = [c.name for c in SyntheticGrounding.BUILDER_CONFIGS]
  if config not in known:
    raise ValueError(f"unknown {BUILTIN} config {config!r}; choose one of {known}")
  return config


def prepare(data_dir: str | pathlib.Path, name: str = BUILTIN) -> SyntheticGrounding:
  builder = SyntheticGrounding(config=_config_name(name), data_dir=str(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def open_dataset(data_dir: str | pathlib.Path, name: str, split: str) -> Dataset:
  config = _config_name(name)
  builder = SyntheticGrounding(config=config, data_dir=str(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{BUILTIN}/{config} is not built under {data_dir}. Build it with: python -c \"from glipjax.data.sources "
        f"import synthetic_grounding as s; s.prepare('{data_dir}', '{name}')\" (training does this for you)")
  cats = [Category(i + 1, n) for i, n in enumerate(synthetic.category_names())]
  return Dataset(name, split, builder.as_data_source(split=split), cats, "synthetic", {},
                 pathlib.Path(builder.data_dir))
