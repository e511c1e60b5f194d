"""Detection-as-grounding prompts and positive maps (GLIP's od_to_grounding / create_positive_map)."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from glipjax.text.tokenizers import char_to_token


def clean_name(name: str) -> str:
  """Category name as GLIP writes it in prompts: parenthesised parts dropped, '_' -> ' ', lower case."""
  name = re.sub(r"\(.*?\)", "", name).replace("_", " ")
  return re.sub(r"\s+", " ", name).strip().lower()


def build_detection_prompt(names: Sequence[str], separator: str = ". ") -> tuple[str, list[tuple[int, int]]]:
  """'person. bicycle. car.' and the character span of each (cleaned) name."""
  prompt, spans = "", []
  for i, name in enumerate(names):
    name = clean_name(name)
    spans.append((len(prompt), len(prompt) + len(name)))
    prompt += name + (separator if i + 1 < len(names) else ".")
  return prompt, spans


def token_map_from_spans(offsets: np.ndarray, spans_per_row: Sequence[Sequence[tuple[int, int]]],
                         max_len: int) -> np.ndarray:
  """Binary [N, max_len] map: row i marks the tokens covering any char span of row i. Spans that fall outside the
  tokenised (possibly truncated) text leave zeros, which callers count as dropped."""
  out = np.zeros((len(spans_per_row), max_len), np.float32)
  for row, spans in enumerate(spans_per_row):
    for beg, end in spans:
      b = char_to_token(offsets, beg)
      if b is None:
        b = char_to_token(offsets, beg + 1)
        if b is None:
          b = char_to_token(offsets, beg + 2)
      e = char_to_token(offsets, end - 1)
      if e is None:
        e = char_to_token(offsets, end - 2)
        if e is None:
          e = char_to_token(offsets, end - 3)
      if b is not None and e is not None and e >= b:
        out[row, b:e + 1] = 1.0
  return out


def sample_detection_prompt(rng: np.random.Generator, positive_names: Sequence[str], all_names: Sequence[str], *,
                            max_negatives: int = 85, max_chars: int | None = None):
  """GLIP's O365 recipe: add negatives (half the time all `max_negatives`, else uniform 1..max), never names of
  positives, shuffle, and keep what fits `max_chars`. Returns (prompt, spans, names in prompt order)."""
  positives = list(dict.fromkeys(positive_names))
  pool = [n for n in dict.fromkeys(all_names) if n not in set(positives)]
  k = min(max_negatives if rng.random() < 0.5 or max_negatives <= 0 else int(rng.integers(1, max_negatives + 1)),
          len(pool))
  negatives = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)] if k else []
  names = positives + negatives
  rng.shuffle(names)
  if max_chars is not None:  # positives first when trimming, so the boxes keep their phrases
    names = sorted(names, key=lambda n: n not in positives)
    kept, length = [], 0
    for n in names:
      if length + len(clean_name(n)) + 2 > max_chars:
        continue
      kept.append(n)
      length += len(clean_name(n)) + 2
    names = kept
    rng.shuffle(names)
  prompt, spans = build_detection_prompt(names)
  return prompt, spans, names


def chunk_categories(names: Sequence[str], chunk_size: int = 40) -> list[list[str]]:
  """Evaluation with many classes (LVIS: 1203) runs one prompt per chunk and merges the detections."""
  return [list(names[i:i + chunk_size]) for i in range(0, len(names), chunk_size)]
