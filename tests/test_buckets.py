"""Aspect-ratio buckets (glipjax/data/buckets.py), the batch spec (glipjax/data/batch.py) and the bucketed pipeline
on a prepared COCO-format dataset of landscape, portrait and square images."""
import json

import numpy as np
import pytest

from glipjax.data.buckets import Buckets, padding_fraction


def test_canvases_cover_each_bucket_at_each_scale():
  b = Buckets(aspects=(0.75, 1.333), short_sides=(480, 800), eval_short_side=800, max_size=1333)
  assert b.canvas(1, 800) == (800, 1088) and b.canvas(0, 800) == (1088, 800) and b.canvas(1, 480) == (480, 640)
  assert len(b.train_shapes()) == 4 and b.eval_shapes() == [(800, 1088), (1088, 800)]
  # Nearest canvas aspect in log space; a very wide image goes to the widest bucket.
  np.testing.assert_array_equal(b.assign([[480, 640], [640, 480], [427, 640], [300, 4000], [4000, 300]]),
                                [1, 0, 1, 1, 0])
  wide = Buckets(aspects=(10.0,), short_sides=(800,), eval_short_side=800, max_size=1333)
  assert wide.canvas(0, 800) == (800, 1344)  # the long side capped at max_size (rounded up to 32)
  with pytest.raises(ValueError, match="aspect_buckets"):
    Buckets(aspects=(0.0,), short_sides=(800,), eval_short_side=800, max_size=1333)


def test_padding_on_coco_like_sizes_meets_the_goal_with_the_default_buckets():
  from benchmarks.padding import coco_like_sizes
  from configs import glip_t
  d = glip_t.get_config("c").data
  hw, buckets = coco_like_sizes(), Buckets.from_config(d)
  assert len(hw) == 5000 and len(buckets.train_shapes()) <= 8
  bucketed = padding_fraction(hw, d.train_short_sides, buckets=buckets, max_size=d.max_size)
  square = padding_fraction(hw, d.train_short_sides, canvas=(1344, 1344), max_size=d.max_size)
  assert bucketed <= 0.15 < 0.6 < square
  # The hand count for one image: 640x480 at short side 480 fills its 480x640 canvas exactly; on the square
  # canvas it covers 480*640 of 1344^2 pixels.
  one = np.array([[480, 640]])
  assert padding_fraction(one, (480,), buckets=buckets) == 0.0
  assert padding_fraction(one, (480,), canvas=(1344, 1344)) == pytest.approx(1 - 480 * 640 / 1344 ** 2)


def test_schedule_ranks_each_batch_within_its_bucket_across_chunks(monkeypatch):
  from glipjax.data import pipeline
  monkeypatch.setattr(pipeline._Schedule, "CHUNK", 16)
  probs = np.array([0.2, 0.5, 0.3])
  got = [pipeline._Schedule(probs, 4, seed=5)(n) for n in range(100)]
  seen = np.zeros(3, int)
  for bucket, scale, rank in got:
    assert rank == seen[bucket] and 0 <= scale < 4
    seen[bucket] += 1
  # Random access (resume) gives the same answer as the sequential walk, and the draw follows `probs`.
  schedule = pipeline._Schedule(probs, 4, seed=5)
  assert [schedule(n) for n in (77, 3, 99)] == [got[77], got[3], got[99]]
  many = pipeline._Schedule(probs, 4, seed=5)
  freq = np.bincount([many(n)[0] for n in range(3000)], minlength=3) / 3000
  np.testing.assert_allclose(freq, probs, atol=0.03)


def test_model_images_normalise_on_device_and_zero_the_padding():
  import jax.numpy as jnp
  from glipjax.data.batch import PIXEL_MEAN_BGR, PIXEL_STD_BGR, model_images
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
  hw = np.array([[8, 12], [5, 7]], np.int32)
  out = np.asarray(model_images(jnp.asarray(images), jnp.asarray(hw)))
  want = (images[..., ::-1].astype(np.float32) - np.float32(PIXEL_MEAN_BGR)) / np.float32(PIXEL_STD_BGR)
  np.testing.assert_allclose(out[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(out[1, :5, :7], want[1, :5, :7], rtol=1e-6)
  assert not out[1, 5:].any() and not out[1, :, 7:].any()
  with pytest.raises(TypeError, match="uint8"):
    model_images(jnp.zeros((1, 8, 8, 3)), jnp.asarray(hw[:1]))


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
  """A prepared COCO dataset of 12 images: landscape 3:2 and 4:3, portrait 3:4, one square, one 40x10 strip;
  with a data config bucketing them into (portrait, landscape) at two scales."""
  import ml_collections
  from PIL import Image

  from glipjax.data import pipeline
  from glipjax.data.prepare import prepare
  from glipjax.text.tokenizers import SentencePieceTokenizer, train_sentencepiece
  root = tmp_path_factory.mktemp("shaped")
  (root / "im").mkdir()
  sizes = [(32, 48), (48, 32), (36, 48), (48, 36), (32, 48), (48, 32), (40, 40), (10, 40), (32, 48), (48, 36),
           (36, 48), (48, 32)]
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "im" / f"{i}.png")
  anns = [dict(id=i, image_id=i, category_id=[2, 5][i % 2], bbox=[2, 2, 6, 5], iscrowd=0) for i in range(12)]
  for split in ("train", "validation"):
    (root / f"{split}.json").write_text(json.dumps(dict(
        images=[dict(id=i, file_name=f"{i}.png", height=h, width=w) for i, (h, w) in enumerate(sizes)],
        annotations=anns, categories=[dict(id=2, name="cat"), dict(id=5, name="dog")])))
    prepare("coco", str(root / f"{split}.json"), str(root / "im"), "shaped", str(root / "tfds"), split=split)
  cfg = ml_collections.ConfigDict(dict(
      sources=(("shaped", 1.0),), eval_source="", data_dir=str(root / "tfds"), train_short_sides=(32, 64),
      max_size=96, eval_short_side=32, canvas=(64, 64), aspect_buckets=(0.75, 1.5), flip_prob=0.5, max_boxes=3,
      max_phrases=4, num_workers=0, detection_prompt_prob=1.0, max_negatives=1))
  sp = train_sentencepiece(pipeline.iter_captions(cfg), root / "sp", 40)
  return cfg, SentencePieceTokenizer(sp), sizes


def test_prepared_image_sizes_are_in_record_order(shaped):
  from glipjax.data import sources
  cfg, _, sizes = shaped
  dataset = sources.open_dataset(cfg.data_dir, "shaped", "train")
  decoded = [np.asarray(dataset.source[i]["image"]).shape[:2] for i in range(len(dataset.source))]
  np.testing.assert_array_equal(dataset.image_sizes, decoded)
  assert sorted(map(tuple, decoded)) == sorted(sizes)


def test_bucketed_training_batches_share_one_canvas_and_fit_it(shaped):
  from glipjax.data import pipeline
  from glipjax.data.batch import BatchSpec
  cfg, tok, _ = shaped
  buckets = Buckets.from_config(cfg)
  make = lambda rows=None: pipeline.make_pipeline(cfg, "train", tok, global_batch_size=4, train=True, seed=2,
                                                  max_query_len=24, rows=rows)
  it = make()
  batches = [next(it) for _ in range(12)]
  shapes = {b["image"].shape[1:3] for b in batches}
  assert shapes <= set(buckets.train_shapes()) and len(shapes) >= 3  # both buckets, both scales
  for b in batches:
    assert b["image"].dtype == np.uint8
    canvas = b["image"].shape[1:3]
    BatchSpec(canvas, cfg.max_boxes, cfg.max_phrases, 24).check({k: v[0] for k, v in b.items()})
    hw, orig = b["image_hw"], b["orig_hw"]
    assert (hw <= canvas).all()
    portrait = canvas[0] > canvas[1]
    assert ((orig[:, 0] >= orig[:, 1]) == portrait).all()  # portrait (and square) images on portrait canvases
    assert not b["image"][0, hw[0, 0]:].any() and not b["image"][0, :, hw[0, 1]:].any()  # zero padding
    assert (hw.min(1) == min(canvas)).any() or (hw.max(1) == max(canvas)).any()  # scaled to fill its canvas
  # Resume and process-count independence hold with buckets as without.
  state = it.get_state()
  expected = next(it)
  resumed = make()
  resumed.set_state(state)
  got = next(resumed)
  halves = [make(rows) for rows in ((0, 2), (2, 4))]
  for h in halves:
    h.set_state(state)
  halves = [next(h) for h in halves]
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), expected[key])


def test_bucketed_evaluation_sees_every_image_once_on_its_bucket(shaped):
  from glipjax.data import pipeline, prompting
  cfg, tok, sizes = shaped
  buckets = Buckets.from_config(cfg)
  prompter = lambda r: prompting.category_prompt(r["labels"], [1, 2], ["cat", "dog"])
  batches = list(pipeline.make_pipeline(cfg, "validation", tok, global_batch_size=4, train=False, seed=0,
                                        max_query_len=24, prompter=prompter))
  assert {b["image"].shape[1:3] for b in batches} == set(buckets.eval_shapes())
  seen = [(int(i), tuple(hw)) for b in batches for i, hw, v in zip(b["image_id"], b["orig_hw"], b["valid"]) if v]
  assert sorted(i for i, _ in seen) == list(range(12))
  assert all(hw == sizes[i] for i, hw in seen)
  assert sum(len(b["valid"]) for b in batches) == 4 * (2 + 2)  # 6 + 6 images: each bucket padded alone
