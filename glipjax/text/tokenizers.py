"""Tokenisers with character offsets, laid out like BERT: `[CLS] tokens... [SEP] [PAD]...`.

`WordPieceTokenizer` reproduces `transformers.BertTokenizerFast` (GLIP's tokenizer) from a vocab file;
`SentencePieceTokenizer` is for towers trained from scratch (the embedded default trains its own).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0..3 in our sentencepiece models, as in BERT's layout


@dataclasses.dataclass(frozen=True)
class TokenizedText:
  input_ids: np.ndarray        # int32 [max_len]
  attention_mask: np.ndarray   # int32 [max_len]
  offsets: np.ndarray          # int32 [max_len, 2] character spans; (0, 0) for special tokens and padding
  num_tokens: int              # real tokens including [CLS]/[SEP]
  truncated: bool              # the text did not fit max_len


def char_to_token(offsets: np.ndarray, char_index: int) -> int | None:
  """The token whose character span contains `char_index` (like BatchEncoding.char_to_token), else None."""
  hit = np.nonzero((offsets[:, 0] <= char_index) & (char_index < offsets[:, 1]))[0]
  return int(hit[0]) if hit.size else None


class Tokenizer:
  vocab_size: int
  pad_id: int = 0

  def _pieces(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    raise NotImplementedError

  cls_id: int
  sep_id: int

  def encode(self, text: str, max_len: int) -> TokenizedText:
    if not text or not text.strip():
      raise ValueError("empty prompt: give at least one phrase, e.g. 'red circle.'")
    if max_len < 3:
      raise ValueError(f"max_len must be >= 3 ([CLS] token [SEP]), got {max_len}")
    ids, spans = self._pieces(text)
    truncated = len(ids) > max_len - 2
    ids, spans = ids[:max_len - 2], spans[:max_len - 2]
    n = len(ids) + 2
    input_ids = np.full(max_len, self.pad_id, np.int32)
    input_ids[:n] = [self.cls_id] + ids + [self.sep_id]
    offsets = np.zeros((max_len, 2), np.int32)
    if spans:
      offsets[1:n - 1] = spans
    mask = (np.arange(max_len) < n).astype(np.int32)
    return TokenizedText(input_ids, mask, offsets, n, truncated)


class WordPieceTokenizer(Tokenizer):
  """BERT uncased WordPiece via HF `tokenizers`; ids and offsets equal BertTokenizerFast's."""

  def __init__(self, vocab_path: str | pathlib.Path, lowercase: bool = True):
    from tokenizers import BertWordPieceTokenizer
    path = pathlib.Path(vocab_path)
    if path.is_dir():
      path = path / "vocab.txt"
    if not path.is_file():
      raise FileNotFoundError(f"WordPiece vocab {path} not found")
    self._tok = BertWordPieceTokenizer(str(path), lowercase=lowercase)
    self._tok.no_padding()
    self._tok.no_truncation()
    self.vocab_size = self._tok.get_vocab_size()
    vocab = self._tok.get_vocab()
    self.pad_id, self.cls_id, self.sep_id = vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]

  @classmethod
  def from_vocab(cls, path_or_dir, lowercase: bool = True) -> "WordPieceTokenizer":
    return cls(path_or_dir, lowercase)

  def _pieces(self, text):
    enc = self._tok.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]


class SentencePieceTokenizer(Tokenizer):
  def __init__(self, model_path: str | pathlib.Path):
    import sentencepiece as spm
    if not pathlib.Path(model_path).is_file():
      raise FileNotFoundError(f"sentencepiece model {model_path} not found")
    self._sp = spm.SentencePieceProcessor(model_file=str(model_path))
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.cls_id, self.sep_id = (self._sp.piece_to_id(p) for p in ("[PAD]", "[CLS]", "[SEP]"))

  def _pieces(self, text):
    proto = self._sp.encode(text, return_type="proto")
    # Proto offsets are UTF-8 byte offsets into the input; convert them to character offsets.
    byte_to_char = np.zeros(len(text.encode("utf-8")) + 1, np.int64)
    pos = 0
    for i, ch in enumerate(text):
      n = len(ch.encode("utf-8"))
      byte_to_char[pos:pos + n] = i
      pos += n
    byte_to_char[pos] = len(text)
    ids, spans = [], []
    for piece in proto.pieces:
      begin, end = int(byte_to_char[piece.begin]), int(byte_to_char[piece.end])
      while begin < end and text[begin].isspace():  # the "▁" marker covers the preceding space
        begin += 1
      if begin == end:  # a bare whitespace marker carries no text: drop it, as WordPiece drops spaces
        continue
      ids.append(piece.id)
      spans.append((begin, end))
    return ids, spans


def train_sentencepiece(sentences: Iterable[str], model_prefix: str | pathlib.Path, vocab_size: int) -> pathlib.Path:
  """Trains a lower-casing BPE model with BERT-like special ids (0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP]). BPE, not
  the unigram default: on a small, repetitive corpus the unigram trainer prunes to a near-character vocabulary
  ('yellow' -> y e l l o w, 33 pieces for a requested 128), which hides the words from a small text tower; BPE
  keeps every frequent word whole."""
  import sentencepiece as spm
  model_prefix = pathlib.Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(sentences)), model_prefix=str(model_prefix), vocab_size=vocab_size,
      model_type="bpe", hard_vocab_limit=False, normalization_rule_name="nmt_nfkc_cf", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      pad_piece=SPECIALS[0], unk_piece=SPECIALS[1], bos_piece=SPECIALS[2], eos_piece=SPECIALS[3],
      num_threads=1, minloglevel=2, input_sentence_size=0, shuffle_input_sentence=False)
  return model_prefix.with_suffix(".model")


def build_tokenizer(kind: str, path: str | pathlib.Path) -> Tokenizer:
  if kind == "wordpiece":
    return WordPieceTokenizer(path)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path)
  raise ValueError(f"unknown tokenizer kind {kind!r}; use 'wordpiece' or 'sentencepiece'")
