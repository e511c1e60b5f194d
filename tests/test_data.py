"""Synthetic scenes, the TFDS builder, numpy transforms and the grain pipeline."""
import ml_collections
import numpy as np
import pytest

from glipjax.data import pipeline, records, sources, synthetic, transforms
from glipjax.data.sources import synthetic_grounding
from glipjax.text.tokenizers import SentencePieceTokenizer, train_sentencepiece


def test_scenes_are_deterministic_and_consistent():
  for seed in range(20):
    a = synthetic.generate_scene(np.random.default_rng(seed))
    b = synthetic.generate_scene(np.random.default_rng(seed))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    assert [a["caption"][s:e] for s, e in a["phrase_spans"]] == a["phrases"]
    assert len(a["boxes"]) == len(a["labels"]) == len(a["box_phrase"]) >= 2
    assert (a["boxes"][:, :2] >= 0).all() and (a["boxes"][:, 2] < 128).all() and (a["boxes"][:, 3] < 128).all()
    assert set(a["box_phrase"].tolist()) - {-1} == set(range(len(a["phrases"])))  # every phrase grounds a box
    for phrase, kind in zip(a["phrases"], a["phrase_labels"]):  # ... of the kind it names, and all of them
      members = a["box_phrase"] == a["phrases"].index(phrase)
      assert (a["labels"][members] == kind).all()
      assert synthetic.kind_name(synthetic.KINDS[kind - 1]) in phrase or "the " in phrase
      if not phrase.startswith("the "):
        assert members.sum() == (a["labels"] == kind).sum()


def test_flip_keeps_relation_captions_true():
  caption = "the red circle left of the blue square. green triangle."
  spans = np.array([[0, 38], [40, 54]])
  new, new_spans = transforms.swap_left_right(caption, spans)
  assert new == "the red circle right of the blue square. green triangle."
  assert [new[a:b] for a, b in new_spans] == ["the red circle right of the blue square", "green triangle"]
  image = np.zeros((10, 20, 3), np.uint8)
  _, boxes, _, _ = transforms.hflip(image, np.array([[0, 0, 4, 9]], np.float32), caption, spans)
  np.testing.assert_array_equal(boxes, [[15, 0, 19, 9]])


def test_boxes_are_clipped_and_bad_ones_dropped():
  boxes = np.array([[-5, -5, 10, 10], [3, 3, 3, 8], [np.nan, 0, 4, 4], [0, 0, 50, 50]], np.float32)
  out, (labels, phrase), dropped = transforms.sanitize_boxes(boxes, (20, 30), np.array([7, 8, 9, 4]),
                                                             np.array([0, 0, 0, -1]))
  np.testing.assert_array_equal(out, [[0, 0, 10, 10], [0, 0, 29, 19]])
  assert dropped == 2 and labels.tolist() == [7, 4] and phrase.tolist() == [0, -1]
  with pytest.raises(transforms.BadExample, match="4 boxes but 1"):
    transforms.sanitize_boxes(boxes, (20, 30), np.array([0]))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  synthetic_grounding.prepare(root, "synthetic_grounding/tiny")
  cfg = ml_collections.ConfigDict(dict(
      sources=(("synthetic_grounding/tiny", 1.0),), eval_source="", data_dir=str(root), train_short_sides=(48, 64),
      max_size=64, eval_short_side=64, canvas=(64, 64), aspect_buckets=(), flip_prob=0.5, max_boxes=6, max_phrases=4, num_workers=0,
      detection_prompt_prob=0.5, max_negatives=14))
  tok = SentencePieceTokenizer(train_sentencepiece(pipeline.iter_captions(cfg), root / "sp", 64))
  return cfg, tok


def test_tfds_source_and_missing_dataset_message(tiny_data, tmp_path):
  cfg, _ = tiny_data
  source = sources.open_dataset(cfg.data_dir, "synthetic_grounding/tiny", "validation").source
  assert len(source) == 8 and source[0]["image"].shape == (64, 64, 3)
  with pytest.raises(FileNotFoundError, match="prepare"):
    sources.open_dataset(tmp_path, "synthetic_grounding/tiny", "train")
  with pytest.raises(FileNotFoundError, match="glipjax.data.prepare --format FORMAT"):
    sources.open_dataset(tmp_path, "coco", "train")


def test_pipeline_batches_are_static_deterministic_and_resumable(tiny_data):
  cfg, tok = tiny_data
  make = lambda: pipeline.make_pipeline(cfg, "train", tok, global_batch_size=4, train=True, seed=3, max_query_len=24)
  it = make()
  b = next(it)
  assert b["image"].shape == (4, 64, 64, 3) and b["input_ids"].shape == (4, 24)
  assert b["positive_map"].shape == (4, 6, 24) and b["phrase_map"].shape == (4, 4, 24)
  assert b["box_mask"].any(1).all()
  # every real box has tokens, and its label's phrase row equals its positive-map row
  for i in range(4):
    for g in np.nonzero(b["box_mask"][i])[0]:
      assert b["positive_map"][i, g].sum() > 0
      np.testing.assert_array_equal(b["positive_map"][i, g], b["phrase_map"][i, b["box_labels"][i, g] - 1])
  np.testing.assert_array_equal(next(make())["image"], b["image"])
  state = it.get_state()
  expected = next(it)
  resumed = make()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])


def test_eval_pipeline_covers_the_split_once_and_skips_corrupt_examples(tiny_data, monkeypatch):
  cfg, tok = tiny_data
  batches = list(pipeline.make_pipeline(cfg, "validation", tok, global_batch_size=3, train=False, seed=0,
                                        max_query_len=64))
  ids = np.concatenate([b["image_id"][b["valid"]] for b in batches])
  assert len(ids) == len(set(ids)) == 8
  real_decode = records.decode

  def corrupt_first(record):
    ex = real_decode(record)
    if ex["image_id"] == ids[0]:
      ex["image"] = ex["image"][..., :2]  # a broken image
    return ex

  monkeypatch.setattr(pipeline.records, "decode", corrupt_first)
  pipeline.SKIPPED.clear()
  batches = list(pipeline.make_pipeline(cfg, "validation", tok, global_batch_size=3, train=False, seed=0,
                                        max_query_len=64))
  assert sum(b["valid"].sum() for b in batches) == 7 and sum(pipeline.SKIPPED.values()) == 1
