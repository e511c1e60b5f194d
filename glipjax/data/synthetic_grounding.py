"""TFDS builder `synthetic_grounding`: the embedded default dataset, generated deterministically from a seed.

  from glipjax.data import synthetic_grounding
  synthetic_grounding.prepare("runs/tfds")                       # builds ArrayRecord files once
  source = synthetic_grounding.data_source("runs/tfds", "train")  # random access, used by the grain pipeline
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from glipjax.data import synthetic


@dataclasses.dataclass
class SyntheticGroundingConfig(tfds.core.BuilderConfig):
  seed: int = 0
  image_size: tuple[int, int] = (128, 128)
  num_train: int = 4000
  num_validation: int = 200
  max_objects: int = 4
  relation_prob: float = 0.25


class SyntheticGrounding(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes, every one boxed with its kind, and captions naming some of them (glipjax/data/synthetic.py)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"2.0.0": "every object boxed with its kind (labels 1..15); phrase_labels; box_phrase -1 for "
                            "objects the caption leaves out"}
  BUILDER_CONFIGS = [
      SyntheticGroundingConfig(name="default", description="128x128, 4000 train / 200 validation"),
      SyntheticGroundingConfig(name="tiny", description="for tests", image_size=(64, 64), num_train=32,
                               num_validation=8),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "image_id": np.int64,
            "caption": tfds.features.Text(),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "phrase_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "box_phrase": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "phrase_spans": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
        }),
        description=__doc__)

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
      yield i, {"image": scene["image"], "image_id": first_id + i, "caption": scene["caption"],
                "boxes": scene["boxes"], "labels": scene["labels"], "box_phrase": scene["box_phrase"],
                "phrase_spans": scene["phrase_spans"], "phrase_labels": scene["phrase_labels"]}


def prepare(data_dir: str | pathlib.Path, config_name: str = "default") -> SyntheticGrounding:
  builder = SyntheticGrounding(config=config_name, data_dir=str(data_dir))
  builder.download_and_prepare(file_format="array_record")
  return builder


def data_source(data_dir: str | pathlib.Path, split: str, config_name: str = "default"):
  builder = SyntheticGrounding(config=config_name, data_dir=str(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"synthetic_grounding/{config_name} is not built under {data_dir}. Build it with: python -c \"from "
        f"glipjax.data import synthetic_grounding as s; s.prepare('{data_dir}', '{config_name}')\" "
        f"(make quickstart does this for you)")
  return builder.as_data_source(split=split)
