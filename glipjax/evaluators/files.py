"""What the file-level scorers share (`glipjax.score` and the protocol modules): reading a results or annotation
file, and the one error type a user's bad file raises, its message naming the file and the record."""
from __future__ import annotations

import json
import pathlib


class ScoreError(ValueError):
  """A results or annotation file that cannot be scored: the message names the file and the record."""


def load_json(path: str | pathlib.Path, what: str):
  """The parsed JSON of `path` (`what`: 'annotation', 'results'...), or a ScoreError naming the file."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (FileNotFoundError, IsADirectoryError) as e:
    raise ScoreError(f"{what} file {path} does not exist") from e
  except UnicodeDecodeError as e:
    raise ScoreError(f"{path}: not UTF-8 text ({e})") from e
  except json.JSONDecodeError as e:
    raise ScoreError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
