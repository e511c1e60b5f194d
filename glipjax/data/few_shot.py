"""Few-shot samples of a detection dataset, the way GLIP's ODinW protocol draws them (`data.few_shot` = k).

The images are shuffled with the seed and taken greedily: an image is kept when one of the categories it shows
still has fewer than k kept images, and it then counts for every category it shows. So every category that
appears in at least k images gets at least k images, hence at least k boxes; a rarer category gets all of its
images. Crowd boxes do not count (training ignores them). The same (dataset, k, seed) always gives the same
sample, on any process count; another seed gives another one.
"""
from __future__ import annotations

import logging

import numpy as np

from glipjax.config_utils import ConfigError
from glipjax.data import records


def sample(image_categories: list[np.ndarray], num_categories: int, k: int, seed: int) -> np.ndarray:
  """Indices (ascending) of the records kept: `image_categories[i]` = the categories (1..num_categories) record i
  shows."""
  if k < 1:
    raise ValueError(f"few-shot k must be >= 1, got {k}")
  order = np.random.default_rng(seed).permutation(len(image_categories))
  need = np.full(num_categories + 1, k)
  need[0] = 0  # category 0: a box of no category (grounding data)
  kept = []
  for i in order:
    cats = np.unique(image_categories[i])
    if (need[cats] > 0).any():
      kept.append(i)
      need[cats] -= 1
  return np.sort(np.asarray(kept, np.int64))


def image_categories(dataset) -> list[np.ndarray]:
  """The categories each record of a prepared dataset shows (crowd boxes excluded)."""
  out = []
  for i in range(len(dataset.source)):
    r = records.decode(dataset.source[i])
    out.append(np.asarray(r["labels"])[~np.asarray(r["iscrowd"], bool)])
  return out


def subset(dataset, k: int, seed: int):
  """`dataset` reduced to its k-shot sample for `seed`; the counts are logged."""
  if dataset.kind not in ("detection", "synthetic") or not dataset.categories:
    raise ConfigError(f"data.few_shot={k}: dataset {dataset.name!r} ({dataset.kind}) has no categories to sample "
                     "k images each of")
  cats = image_categories(dataset)
  kept = sample(cats, len(dataset.categories), k, seed)
  images_per_category = np.zeros(len(dataset.categories) + 1, np.int64)
  for i in kept:
    images_per_category[np.unique(cats[i])] += 1
  short = [dataset.categories[c].name for c in np.nonzero(images_per_category[1:] < k)[0]]
  logging.warning("few-shot k=%d seed=%d of %s: %d of %d images%s", k, seed, dataset.name, len(kept),
                  len(dataset.source), f"; fewer than {k} images exist of: {short}" if short else "")
  return dataset.subset(kept)
