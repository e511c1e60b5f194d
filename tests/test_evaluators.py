"""Evaluation protocols on hand-made records: crowd regions are ignored, long category lists are chunked."""
import numpy as np
import pytest

from glipjax.evaluators import common


def _records():
  boxes = np.array([[0, 0, 9, 9], [20, 20, 39, 39], [50, 0, 79, 29]], np.float32)
  return {7: dict(boxes=boxes, labels=np.array([1, 2, 1]), iscrowd=np.array([False, False, True]),
                  box_phrase=np.array([0, 1, -1]), image_hw=(80, 80), caption="", phrase_spans=np.zeros((0, 2)))}


def test_a_detection_on_a_crowd_region_is_neither_a_hit_nor_a_false_positive():
  records = _records()
  protocol = common.Protocol("detection", [], [1, 2], True)
  exact = dict(boxes=records[7]["boxes"][:2], scores=np.array([0.9, 0.8]), category_ids=np.array([1, 2]))
  assert common.score(protocol, records, {7: exact})["AP"] == pytest.approx(1.0)
  # A better-scored detection on the crowd region of category 1 does not lower AP...
  on_crowd = dict(boxes=records[7]["boxes"][[2, 0, 1]], scores=np.array([0.95, 0.9, 0.8]),
                  category_ids=np.array([1, 1, 2]))
  assert common.score(protocol, records, {7: on_crowd})["AP"] == pytest.approx(1.0)
  # ...but the same box is a false positive once it is not a crowd region.
  plain = {7: dict(records[7], iscrowd=np.zeros(3, bool), labels=np.array([1, 2, 2]))}
  assert common.score(protocol, plain, {7: on_crowd})["AP"] < 1.0


def test_category_prompters_cover_every_category_once_within_the_limits(tmp_path):
  from glipjax.text.tokenizers import WordPieceTokenizer
  names = [f"thing{i}" for i in range(30)]
  (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + names) + "\n")
  tokenizer = WordPieceTokenizer(tmp_path / "vocab.txt")  # one token per name and per ". "
  prompters = common.category_prompters(names, tokenizer, max_query_len=24, max_phrases=7)
  assert len(prompters) == 6  # 11 names fit 24 tokens (11, 11, 8), at most 7 phrases each: 7+4, 7+4, 7+1
  seen = []
  for prompter in prompters:
    p = prompter(dict(labels=np.array([1, 12, 30])))
    assert len(p.spans) <= 7 and not tokenizer.encode(p.caption, 24).truncated
    seen += list(p.phrase_categories)
    phrases = [p.caption[a:b] for a, b in p.spans]
    assert phrases == [names[c - 1] for c in p.phrase_categories]
  assert sorted(seen) == list(range(1, 31))
