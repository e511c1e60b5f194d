"""The few-shot sampler (data.few_shot, the ODinW protocol): its guarantees, determinism, and the sampled dataset
the trainer reads."""
import numpy as np
import pytest

from glipjax.data import few_shot, sources


def random_images(seed=0, n=300, num_categories=12):
  """Images of 0-3 boxes, category frequencies from common (1) to rare (12)."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, num_categories + 1)
  return [rng.choice(np.arange(1, num_categories + 1), size=rng.integers(0, 4), p=p / p.sum()) for _ in range(n)]


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_every_category_gets_k_images_or_all_it_has(k):
  images = random_images()
  for seed in range(3):
    kept = few_shot.sample(images, 12, k, seed)
    assert len(set(kept.tolist())) == len(kept) and (np.diff(kept) > 0).all()
    for c in range(1, 13):
      available = sum(c in im for im in images)
      got_images = sum(c in images[i] for i in kept)
      got_boxes = sum(int((images[i] == c).sum()) for i in kept)
      assert got_images >= min(k, available) and got_boxes >= min(k, available), (k, seed, c)
    # Greedy: every kept image was needed by a category when it was taken, so the sample stays small.
    assert len(kept) <= 12 * k


def test_the_sample_depends_on_the_seed_only():
  images = random_images()
  a, b = few_shot.sample(images, 12, 3, seed=0), few_shot.sample(images, 12, 3, seed=0)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, few_shot.sample(images, 12, 3, seed=1))
  with pytest.raises(ValueError, match="k must be >= 1"):
    few_shot.sample(images, 12, 0, seed=0)


def test_a_prepared_dataset_reduces_to_its_sample(prepared_mixture):
  det = sources.open_dataset(prepared_mixture, "det", "train")  # 6 images, 3 categories, 1-2 boxes each
  one_shot = few_shot.subset(det, 1, seed=0)
  assert 1 <= len(one_shot.source) < len(det.source)
  shown = set()
  for i in range(len(one_shot.source)):
    shown |= set(np.asarray(one_shot.source[i]["labels"]).tolist())
  assert shown == {1, 2, 3}
  np.testing.assert_array_equal(one_shot.image_sizes, det.image_sizes[one_shot.source.indices])
  with pytest.raises(ValueError, match="no categories"):
    few_shot.subset(sources.open_dataset(prepared_mixture, "gnd", "train"), 1, seed=0)
