"""The embedded grounding task: detection prompts with negatives and distractors, captions, train/validation
separation, caption rewrites, and an evaluation that a text-blind detector fails."""
import hashlib

import ml_collections
import numpy as np
import pytest

from glipjax.data import pipeline, prompting, synthetic
from glipjax.data.sources import synthetic_grounding
from glipjax.evaluators import common, synthetic as synthetic_eval
from glipjax.text.tokenizers import SentencePieceTokenizer, train_sentencepiece

MAX_LEN, MAX_PHRASES = 64, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  synthetic_grounding.prepare(root, "synthetic_grounding/tiny")
  cfg = ml_collections.ConfigDict(dict(
      sources=(("synthetic_grounding/tiny", 1.0),), eval_source="", data_dir=str(root), train_short_sides=(48, 64),
      max_size=64, eval_short_side=64, canvas=(64, 64), aspect_buckets=(), flip_prob=0.5, max_boxes=6, max_phrases=MAX_PHRASES,
      num_workers=0, detection_prompt_prob=0.5, max_negatives=14))
  tok = SentencePieceTokenizer(train_sentencepiece(pipeline.iter_captions(cfg), root / "sp", 128))
  return cfg, tok


def test_every_kind_is_one_word_pair_and_all_15_fit_one_prompt(data):
  _, tok = data
  names = synthetic.category_names()
  assert len(names) == 15 and all(tok.encode(n, MAX_LEN).num_tokens == 4 for n in names)  # [CLS] colour shape [SEP]
  assert prompting.chunks_that_fit(names, tok, MAX_LEN) == [list(range(15))]
  chunks = prompting.chunks_that_fit(names, tok, 16)
  assert [i for c in chunks for i in c] == list(range(15)) and len(chunks) > 1
  from glipjax.text import prompts
  assert all(not tok.encode(prompts.build_detection_prompt([names[i] for i in c])[0], 16).truncated for c in chunks)


def test_detection_prompts_list_every_present_kind_plus_negatives_and_distractors(data):
  cfg, tok = data
  names = synthetic.category_names()
  records = common.load_records(cfg, "train")
  hard = 0
  for n, record in enumerate(records.values()):
    rng = np.random.default_rng(n)
    p = prompting.sampled_detection_prompt(record["labels"], names, rng, max_negatives=14, tokenizer=tok,
                                           max_len=MAX_LEN, max_phrases=MAX_PHRASES)
    phrases = [p.caption[a:b] for a, b in p.spans]
    present = {names[l - 1] for l in record["labels"]}
    assert present <= set(phrases) and len(phrases) == len(set(phrases))
    # spans right: every box's phrase is its kind's name, and the phrase stands for that category
    for label, phrase in zip(record["labels"], p.box_phrase):
      assert phrases[phrase] == names[label - 1] and p.phrase_categories[phrase] == label
    negatives = set(phrases) - present
    assert negatives  # every prompt names kinds that are not in the image
    words = lambda ns: {w for name in ns for w in name.split()}
    hard += bool(any(set(neg.split()) & words(present) for neg in negatives))
    assert not tok.encode(p.caption, MAX_LEN).truncated
  assert hard / len(records) > 0.8  # absent kinds that share a colour or a shape with a present one
  # and the scenes themselves hold distractors: objects sharing a colour or a shape with another kind present
  kinds = [{synthetic.KINDS[l - 1] for l in r["labels"]} for r in records.values()]
  shared = [any(a != b and (a[0] == b[0] or a[1] == b[1]) for a in ks for b in ks) for ks in kinds if len(ks) > 1]
  assert np.mean(shared) == 1.0 and len(shared) > len(records) / 2


def test_training_batches_mix_detection_prompts_and_captions(data):
  cfg, tok = data
  it = pipeline.make_pipeline(cfg, "train", tok, global_batch_size=8, train=True, seed=0, max_query_len=MAX_LEN)
  with_negatives = grounded_only = 0
  for _ in range(4):
    b = next(it)
    for i in range(8):
      boxes = b["box_mask"][i]
      assert boxes.any()
      for g in np.nonzero(boxes)[0]:  # every box's target tokens are its phrase's tokens
        np.testing.assert_array_equal(b["positive_map"][i, g], b["phrase_map"][i, b["box_labels"][i, g] - 1])
      grounded = set(b["box_labels"][i][boxes].tolist())
      if b["phrase_mask"][i].sum() > len(grounded):
        with_negatives += 1
      else:
        grounded_only += 1
  assert with_negatives >= 8 and grounded_only >= 4, (with_negatives, grounded_only)


def test_train_and_validation_never_share_an_image(data):
  cfg, _ = data
  digest = lambda split: {hashlib.sha1(r["image"].tobytes()).hexdigest()
                          for r in common.load_records(cfg, split, with_images=True).values()}
  train, validation = digest("train"), digest("validation")
  assert len(train) == 32 and len(validation) == 8 and not train & validation


def test_caption_rewrites_change_the_named_kind_only():
  caption = "the red circle left of the blue square. green triangles."
  spans = np.array([[0, 38], [40, 55]])
  labels = np.array([1, 8, 6, 6])  # red circle, blue square, green triangle x2
  rng = np.random.default_rng(0)
  new, new_spans, kinds = synthetic.rewrite_caption(caption, spans, labels, "colour_swapped", rng)
  first, second = (new[a:b] for a, b in new_spans)
  assert first.endswith(" circle left of the blue square") and not first.startswith("the red ")
  assert second.endswith(" triangles") and not second.startswith("green")
  assert [synthetic.phrase_kind(first), synthetic.phrase_kind(second)] == kinds.tolist()
  new, new_spans, kinds = synthetic.rewrite_caption(caption, spans, labels, "absent_kinds", rng)
  assert not set(kinds.tolist()) & set(labels.tolist())
  assert new[new_spans[1][0]:new_spans[1][1]].endswith("s")  # plural kept
  assert synthetic.phrase_kind("shape") is None and synthetic.phrase_kind("purple squares") == 14


def _oracle(records, protocol, *, reads_text: bool) -> dict:
  """Detections of a perfect detector that either reads each phrase (boxes of the kind it names) or ignores the
  text (every object for every phrase, scored by the object alone), for every prompt chunk of `protocol`."""
  out = {}
  for image_id, record in records.items():
    dets = []
    for prompter in protocol.prompters:
      prompt = prompter(record)
      for p, (a, b) in enumerate(prompt.spans):
        kind = synthetic.phrase_kind(prompt.caption[a:b])
        hit = record["labels"] == kind if reads_text else np.ones(len(record["labels"]), bool)
        scores = 0.9 - 0.01 * np.arange(len(hit))
        dets.append(dict(boxes=record["boxes"][hit], scores=scores[hit],
                         category_ids=np.full(hit.sum(), prompt.phrase_categories[p])))
    out[image_id] = common.merge_top(dets, 100)
  return out


def test_the_evaluation_fails_a_detector_that_ignores_the_text(data):
  cfg, tok = data
  records = common.load_records(cfg, "train")
  table = synthetic_eval.protocols(tok, MAX_LEN, MAX_PHRASES)
  ap50 = {reads: {name: common.score(p, records, _oracle(records, p, reads_text=reads))["AP50"]
                  for name, p in table.items()} for reads in (True, False)}
  reader, blind = ap50[True], ap50[False]
  assert reader["detection"] > 0.99 and reader["grounding"] > 0.99
  assert reader["detection_text_blind"] == 0.0  # no phrase names a kind: a reader finds nothing
  assert reader["grounding_colour_swapped"] <= 0.2 * reader["grounding"]
  assert reader["grounding_absent_kinds"] == 0.0
  # Ignoring the words: the same boxes whatever the prompt says. Detection over 15 kinds exposes it, and the
  # caption rewrites leave its grounding AP unchanged.
  assert blind["detection"] < 0.5 * reader["detection"], blind
  assert blind["grounding_colour_swapped"] == blind["grounding"] == blind["grounding_absent_kinds"]


def test_pictures_draw_each_object_once_with_its_best_label():
  from glipjax import visualize
  boxes = np.array([[0, 0, 9, 9], [1, 0, 9, 10], [30, 30, 40, 40], [0, 0, 9, 9]], np.float32)
  scores = np.array([0.4, 0.6, 0.35, 0.5])
  assert visualize.best_per_object(boxes, scores).tolist() == [1, 2]
  assert visualize.best_per_object(boxes[:0], scores[:0]).tolist() == []
