"""The prompting stage: a record (every box labelled with a category, and optionally a caption whose phrases
ground some boxes) becomes a grounding example: a prompt, its phrase spans, and the phrase each box belongs to.

Training mixes GLIP's two kinds of examples: detection-as-grounding prompts that list the categories present
plus sampled negatives (`text/prompts.py`, the O365 recipe), so the model must read the prompt to know which
boxes are wanted, and captions whose phrases are grounded as annotated. Evaluation uses fixed prompts (every
category, chunked to fit the text length) built by the same code.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from glipjax.config_utils import ConfigError
from glipjax.data import records
from glipjax.text import prompts
from glipjax.text.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A grounding example's text side: `box_phrase` [N] gives each box of the record its phrase (0-based, -1 =
  not in this prompt), `phrase_categories` [P] the category id each phrase stands for (evaluation maps a
  detection's phrase to it)."""
  caption: str
  spans: np.ndarray          # [S, 2] character spans of the phrases
  box_phrase: np.ndarray     # [N] int32
  phrase_categories: np.ndarray  # [P] int32
  span_phrase: np.ndarray | None = None  # [S] the phrase of each span (None: one span per phrase)

  def phrase_spans(self) -> list[list[tuple[int, int]]]:
    span_phrase = np.arange(len(self.spans)) if self.span_phrase is None else self.span_phrase
    return records.phrase_span_lists(self.spans, span_phrase)


def caption_prompt(record: dict) -> Prompt:
  """The record's own caption; phrase i stands for category i + 1 (grounding is scored per phrase)."""
  spans = np.asarray(record["phrase_spans"], np.int32).reshape(-1, 2)
  span_phrase = np.asarray(record.get("span_phrase", np.arange(len(spans))), np.int32).reshape(-1)
  num_phrases = int(span_phrase.max()) + 1 if len(span_phrase) else 0
  return Prompt(record["caption"], spans, np.asarray(record["box_phrase"], np.int32),
                np.arange(1, num_phrases + 1, dtype=np.int32), span_phrase)


def category_prompt(labels: np.ndarray, category_ids: Sequence[int], names: Sequence[str]) -> Prompt:
  """A fixed detection prompt naming `names` (the categories `category_ids`, in this order); each box whose
  label is one of them belongs to its phrase."""
  caption, spans = prompts.build_detection_prompt(names)
  where = {int(c): i for i, c in enumerate(category_ids)}
  box_phrase = np.array([where.get(int(l), -1) for l in labels], np.int32)
  return Prompt(caption, np.asarray(spans, np.int32).reshape(-1, 2), box_phrase,
                np.asarray(category_ids, np.int32))


def sampled_detection_prompt(labels: np.ndarray, category_names: Sequence[str], rng: np.random.Generator, *,
                             max_negatives: int, max_chars: int | None = None, tokenizer: Tokenizer | None = None,
                             max_len: int = 0, max_phrases: int | None = None) -> Prompt:
  """GLIP's detection-as-grounding prompt: the categories present (`labels`, ids into `category_names` from 1)
  and sampled negatives, shuffled. Negatives are dropped until the prompt has at most `max_phrases` phrases and
  (with a `tokenizer`) fits `max_len` tokens, so that no positive loses its phrase to truncation (GLIP's
  positive-overflow check); boxes whose category still does not fit (or was trimmed by `max_chars`) get -1."""
  present = [category_names[int(l) - 1] for l in dict.fromkeys(np.asarray(labels).tolist())]
  _, _, names = prompts.sample_detection_prompt(rng, present, category_names, max_negatives=max_negatives,
                                                max_chars=max_chars)
  def too_long():
    return ((max_phrases is not None and len(names) > max_phrases) or
            (tokenizer is not None and tokenizer.encode(prompts.build_detection_prompt(names)[0], max_len).truncated))

  positives = set(present)
  while too_long():
    negatives = [i for i, n in enumerate(names) if n not in positives]
    if not negatives:
      break
    del names[negatives[-1]]
  ids = {name: i + 1 for i, name in enumerate(category_names)}
  return category_prompt(labels, [ids[n] for n in names], names)


def caption_with_negatives(record: dict, category_names: Sequence[str], rng: np.random.Generator, *,
                           max_negatives: int, tokenizer: Tokenizer | None = None, max_len: int = 0,
                           max_phrases: int | None = None) -> Prompt:
  """The record's caption followed by 1..`max_negatives` phrases naming categories absent from the image
  ('red circle. blue squares. purple triangle.' where no purple triangle is): phrases no box grounds, so the
  model must read a caption's words instead of firing on every object. Negatives that would exceed
  `max_phrases` or `max_len` tokens are dropped (the caption's own phrases are never trimmed here)."""
  base = caption_prompt(record)
  present = set(np.asarray(record["labels"]).tolist())
  pool = [i for i in range(1, len(category_names) + 1) if i not in present]
  k = min(int(rng.integers(1, max_negatives + 1)) if max_negatives > 0 else 0, len(pool))
  chosen = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)] if k else []
  num_phrases = len(base.phrase_categories)
  if max_phrases is not None:
    chosen = chosen[:max(0, max_phrases - num_phrases)]
  while True:
    caption, spans = base.caption, [tuple(s) for s in base.spans]
    for cid in chosen:
      name = prompts.clean_name(category_names[cid - 1])
      caption = f"{caption} {name}." if caption else f"{name}."
      spans.append((len(caption) - len(name) - 1, len(caption) - 1))
    if not chosen or tokenizer is None or not tokenizer.encode(caption, max_len).truncated:
      break
    chosen.pop()
  span_phrase = np.concatenate([np.arange(len(base.spans)) if base.span_phrase is None else base.span_phrase,
                                num_phrases + np.arange(len(chosen))]).astype(np.int32)
  return Prompt(caption, np.asarray(spans, np.int32).reshape(-1, 2), base.box_phrase,
                np.arange(1, num_phrases + len(chosen) + 1, dtype=np.int32), span_phrase)


class TrainPrompter:
  """Per training example: with probability `detection_prob` a sampled detection prompt over `category_names`,
  otherwise the record's caption (records without a caption always get a detection prompt), followed by up to
  `caption_negatives` names of absent categories (`caption_with_negatives`). `fixed`: every example gets the one
  prompt naming every category in order — the prompt evaluation uses, which prompt tuning needs (its table adds
  a vector per token position, so a position must always hold the same word) and GLIP fine-tunes ODinW with."""

  def __init__(self, category_names: Sequence[str], *, detection_prob: float, max_negatives: int,
               tokenizer: Tokenizer | None = None, max_len: int = 0, max_phrases: int | None = None,
               caption_negatives: int = 0, fixed: bool = False):
    self.names, self.detection_prob = list(category_names), detection_prob
    self.max_negatives, self.tokenizer, self.max_len, self.max_phrases = max_negatives, tokenizer, max_len, max_phrases
    self.caption_negatives = caption_negatives
    self.fixed = fixed
    if fixed:
      if not self.names:
        raise ConfigError("data.fixed_prompt needs a dataset with categories")
      too_many = max_phrases is not None and len(self.names) > max_phrases
      if too_many or (tokenizer is not None and tokenizer.encode(
          prompts.build_detection_prompt(self.names)[0], max_len).truncated):
        raise ConfigError(f"data.fixed_prompt: the prompt naming all {len(self.names)} categories does not fit "
                         f"model.max_query_len={max_len} tokens / data.max_phrases={max_phrases}")

  def __call__(self, record: dict, rng: np.random.Generator) -> Prompt:
    if self.fixed:
      return category_prompt(record["labels"], range(1, len(self.names) + 1), self.names)
    has_caption = bool(record.get("caption")) and len(record.get("phrase_spans", ())) > 0
    if self.names and (not has_caption or rng.random() < self.detection_prob):
      return sampled_detection_prompt(record["labels"], self.names, rng, max_negatives=self.max_negatives,
                                      tokenizer=self.tokenizer, max_len=self.max_len, max_phrases=self.max_phrases)
    if self.caption_negatives > 0 and self.names:
      return caption_with_negatives(record, self.names, rng, max_negatives=self.caption_negatives,
                                    tokenizer=self.tokenizer, max_len=self.max_len, max_phrases=self.max_phrases)
    return caption_prompt(record)


def chunks_that_fit(names: Sequence[str], tokenizer: Tokenizer, max_len: int) -> list[list[int]]:
  """Splits the category list (indices into `names`) into consecutive chunks whose detection prompt tokenises
  within `max_len` tokens (GLIP chunks LVIS's 1203 names the same way, by a fixed 40)."""
  chunks, current = [], []
  for i in range(len(names)):
    trial = current + [i]
    if tokenizer.encode(prompts.build_detection_prompt([names[j] for j in trial])[0], max_len).truncated:
      if not current:
        raise ValueError(f"category name {names[i]!r} alone does not fit {max_len} tokens")
      chunks.append(current)
      trial = [i]
    current = trial
  if current:
    chunks.append(current)
  return chunks
