"""Flickr30k Entities phrase grounding: recall@k (k = 1, 5, 10 and the all-boxes upper bound), overall and per
phrase type, with the protocol of MDETR's `datasets/flickr_eval.py` (which GLIP reuses unchanged).

Ground truth is the dataset's own tree: `Sentences/<id>.txt` (one caption a line, entities marked up as
`[/EN#18/people A man]`) and `Annotations/<id>.xml` (boxes per entity id), for the images of a split. The official
protocol, which these functions keep:
- boxes are read from the xml as written (no 1 subtracted) and compared in continuous coordinates: area = w * h,
  IoU without the +1, a hit when IoU >= 0.5;
- only phrases whose entity has a box are evaluated (nobox and scene entities drop out), and a sentence with none
  of them is not required;
- merge_boxes: an entity's boxes become the one box enclosing them all (the ground truth only, not predictions);
- a phrase with several types counts toward each of them.
Results: `[{image_id: <Flickr id>, sentence_id: <line in Sentences/<id>.txt>, boxes: [[[x1, y1, x2, y2], ...ranked
best first] for each evaluated phrase in sentence order]}]`, in original image pixels."""
from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import Sequence

import numpy as np

from glipjax.evaluators.files import ScoreError, load_json

# -1 is the official "Upper_bound": the best of all predicted boxes, however many (MDETR reports it by default).
TOPK = (1, 5, 10, -1)


def parse_sentence(line: str) -> dict:
  """One caption: its text with the markup removed, words joined by single spaces (as the official reader does,
  so sentence text and spans match theirs), and its entity phrases with `span` the phrase's [begin, end) in text."""
  words: list[str] = []
  phrases: list[dict] = []
  current = None  # the phrase being read: its opening token carried the id and types, the words follow
  for token in line.split():
    if current is not None:
      closes = token.endswith("]")
      token = token[:-1] if closes else token
      current["words"].append(token)
      words.append(token)
      if closes:
        phrases.append(current)
        current = None
    elif token.startswith("["):
      parts = token.split("/")
      if len(parts) < 3 or not parts[1].startswith("EN#"):
        raise ScoreError(f"malformed entity markup {token!r} (expected [/EN#<id>/<type>...)")
      current = dict(phrase_id=parts[1][3:], phrase_type=parts[2:], first_word_index=len(words), words=[])
    else:
      words.append(token)
  # A phrase left open at the end of the line is dropped, as the official reader drops it.
  starts = np.cumsum([0] + [len(w) + 1 for w in words]).tolist()
  out = []
  for p in phrases:
    phrase = " ".join(p["words"])
    begin = starts[p["first_word_index"]]
    out.append(dict(phrase=phrase, phrase_id=p["phrase_id"], phrase_type=p["phrase_type"],
                    first_word_index=p["first_word_index"], span=(begin, begin + len(phrase))))
  return dict(text=" ".join(words), phrases=out)


def read_sentences(path: str | pathlib.Path) -> list[dict]:
  """The captions of one image, one per non-empty line: blank lines are skipped and do not take a sentence id."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding="utf-8").split("\n")
  except (FileNotFoundError, IsADirectoryError) as e:
    raise ScoreError(f"sentence file {path} does not exist") from e
  except UnicodeDecodeError as e:
    raise ScoreError(f"{path}: not UTF-8 text ({e})") from e
  out = []
  for n, line in enumerate(lines):
    if not line:
      continue
    try:
      out.append(parse_sentence(line))
    except ScoreError as e:
      raise ScoreError(f"{path}: line {n + 1}: {e}") from e
  return out


def _int(element, tag: str, path: pathlib.Path, default: int | None = None) -> int:
  child = element.find(tag)
  if child is None and default is not None:
    return default
  try:
    return int(child.text)
  except (AttributeError, TypeError, ValueError) as e:
    text = None if child is None else child.text
    raise ScoreError(f"{path}: <{tag}> is {text!r}; expected an integer") from e


def read_annotations(path: str | pathlib.Path) -> dict:
  """One image's entities: {boxes: {entity id: [[x1, y1, x2, y2], ...]}, scene: [ids], nobox: [ids], height,
  width (and the other <size> fields)}. An object with several <name>s gives its box to each of them."""
  path = pathlib.Path(path)
  try:
    root = ET.parse(path).getroot()
  except (FileNotFoundError, IsADirectoryError) as e:
    raise ScoreError(f"annotation file {path} does not exist") from e
  except ET.ParseError as e:
    raise ScoreError(f"{path}: malformed XML ({e})") from e
  size = root.find("size")
  if size is None:
    raise ScoreError(f"{path}: no <size> (width, height)")
  info: dict = {child.tag: _int(size, child.tag, path) for child in size}
  if not {"width", "height"} <= set(info):
    raise ScoreError(f"{path}: <size> lacks width or height")
  boxes: dict[str, list[list[int]]] = {}
  nobox: list[str] = []
  scene: list[str] = []
  for obj in root.findall("object"):
    bndbox = obj.find("bndbox")
    box = None if bndbox is None else [_int(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax")]
    for name in obj.findall("name"):
      entity = (name.text or "").strip()
      if not entity:
        raise ScoreError(f"{path}: an <object> has an empty <name>")
      if box is not None:
        boxes.setdefault(entity, []).append(list(box))
        continue
      # Boxless objects: not visible (nobndbox) and/or the whole scene; an absent flag reads as 0.
      if _int(obj, "nobndbox", path, default=0) > 0:
        nobox.append(entity)
      if _int(obj, "scene", path, default=0) > 0:
        scene.append(entity)
  return dict(info, boxes=boxes, scene=scene, nobox=nobox)


class Entities:
  """The sentences and ground-truth boxes of a split's images: what must be predicted (`all_ids`, and per sentence
  `evaluated_phrases`) and the boxes it is scored against."""

  def __init__(self, root: str | pathlib.Path, image_ids: Sequence[str], merge_boxes: bool = False):
    self.root = pathlib.Path(root)
    self.merge_boxes = merge_boxes
    for folder in ("Sentences", "Annotations"):
      if not (self.root / folder).is_dir():
        raise ScoreError(f"Flickr30k Entities folder {self.root / folder} does not exist")
    self.image_ids = list(dict.fromkeys(str(i) for i in image_ids))
    self._boxes: dict[str, dict[str, np.ndarray]] = {}
    self._sentences: dict[str, list[dict]] = {}
    self._phrases: dict[str, list[list[dict]]] = {}
    self.all_ids: list[tuple[str, int]] = []
    for image_id in self.image_ids:
      boxes = {e: np.asarray(b, np.float64).reshape(-1, 4)
               for e, b in read_annotations(self.root / "Annotations" / f"{image_id}.xml")["boxes"].items()}
      if merge_boxes:
        boxes = {e: np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])[None] for e, b in boxes.items()}
      sentences = read_sentences(self.root / "Sentences" / f"{image_id}.txt")
      phrases = [[p for p in s["phrases"] if p["phrase_id"] in boxes] for s in sentences]
      self._boxes[image_id], self._sentences[image_id], self._phrases[image_id] = boxes, sentences, phrases
      self.all_ids += [(image_id, k) for k, p in enumerate(phrases) if p]

  def __contains__(self, image_id) -> bool:
    return str(image_id) in self._sentences

  def num_sentences(self, image_id) -> int:
    return len(self._sentences[str(image_id)])

  def sentence(self, image_id, sentence_id: int) -> dict:
    """The parsed caption (text and all its phrases): the prompt is built from its text."""
    return self._sentences[str(image_id)][sentence_id]

  def evaluated_phrases(self, image_id, sentence_id: int) -> list[dict]:
    """The sentence's phrases that have ground-truth boxes, in sentence order: one ranked box list each is due."""
    return self._phrases[str(image_id)][sentence_id]

  def boxes(self, image_id, phrase_id: str) -> np.ndarray:
    """[N, 4] xyxy ground truth of an entity (one enclosing box with merge_boxes)."""
    return self._boxes[str(image_id)][phrase_id]


def iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """[N, M] IoU of xyxy boxes in continuous coordinates (area = w * h, no +1), as the official evaluator has it."""
  area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  return inter / np.maximum(area(boxes1)[:, None] + area(boxes2)[None] - inter, 1e-12)


def _ids(r: dict, n: int, path) -> tuple[str, int]:
  image_id, sentence_id = r["image_id"], r["sentence_id"]
  if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
    raise ScoreError(f"{path}: record {n} has image_id {image_id!r}; expected a Flickr image id")
  if isinstance(sentence_id, str) and sentence_id.isdigit():
    sentence_id = int(sentence_id)
  if isinstance(sentence_id, bool) or not isinstance(sentence_id, int):
    raise ScoreError(f"{path}: record {n} has sentence_id {sentence_id!r}; expected an integer")
  return str(image_id), sentence_id


def score(entities: Entities, predictions, *, topk: Sequence[int] = TOPK, iou_thresh: float = 0.5,
          path: str | pathlib.Path = "results") -> dict[str, float]:
  """{'Recall@1', 'Recall@5', 'Recall@10', 'Upper_bound' (k = -1: any predicted box), and per phrase type
  'Recall@1/people', ...} over every evaluated phrase of the split.

  Strict, as the official evaluator is: every sentence of `entities.all_ids` must be predicted (it raises on
  missing ones), with exactly one non-empty ranked box list per evaluated phrase. Unlike it, a repeated sentence
  raises too (it warns and keeps the first). A prediction for a sentence without evaluated phrases is ignored."""
  if any(k != -1 and k < 1 for k in topk):
    raise ValueError(f"topk {topk}: recall@k needs k >= 1 (or -1 for the upper bound)")
  if not entities.all_ids:
    raise ScoreError(f"{entities.root}: the split has no phrase with a ground-truth box to evaluate")
  if not isinstance(predictions, list):
    raise ScoreError(f"{path}: a Flickr30k results file is a JSON list of {{image_id, sentence_id, boxes}}")
  totals: dict[str, int] = defaultdict(int)
  hits = {k: defaultdict(int) for k in topk}
  seen: dict[tuple[str, int], int] = {}
  for n, r in enumerate(predictions):
    if not isinstance(r, dict) or not {"image_id", "sentence_id", "boxes"} <= set(r):
      raise ScoreError(f"{path}: record {n} needs image_id, sentence_id and boxes; got {r!r:.200}")
    image_id, sentence_id = key = _ids(r, n, path)
    where = f"record {n} (image {image_id} sentence {sentence_id})"
    if image_id not in entities:
      raise ScoreError(f"{path}: record {n} names image_id {r['image_id']!r}, which is not in the split")
    if not 0 <= sentence_id < entities.num_sentences(image_id):
      raise ScoreError(f"{path}: {where}: image {image_id} has sentences 0..{entities.num_sentences(image_id) - 1}")
    if key in seen:
      raise ScoreError(f"{path}: {where} repeats record {seen[key]}")
    seen[key] = n
    ranked = r["boxes"]
    if not isinstance(ranked, list):
      raise ScoreError(f"{path}: {where}: boxes is {type(ranked).__name__}; expected one box list per phrase")
    phrases = entities.evaluated_phrases(image_id, sentence_id)
    if not phrases:  # nothing to ground in this sentence: the official evaluator skips it
      continue
    if len(ranked) != len(phrases):
      raise ScoreError(f"{path}: {where} has box lists for {len(ranked)} phrases; the sentence has {len(phrases)} "
                       "phrases with ground-truth boxes")
    for j, (boxes, phrase) in enumerate(zip(ranked, phrases)):
      try:
        boxes = np.asarray(boxes, np.float64)
      except (TypeError, ValueError):
        boxes = np.zeros((0, 0))
      # The official evaluator cannot score an empty list (it fails on it), nor inverted boxes (negative areas).
      if (boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) or not np.isfinite(boxes).all()
          or (boxes[:, 2:] < boxes[:, :2]).any()):
        raise ScoreError(f"{path}: {where} phrase {j} ({phrase['phrase']!r}): boxes must be a non-empty list of "
                         "[x1, y1, x2, y2] with x1 <= x2, y1 <= y2")
      best = iou(boxes, entities.boxes(image_id, phrase["phrase_id"])).max(axis=1)  # per predicted box, by rank
      categories = ["all", *phrase["phrase_type"]]
      for c in categories:
        totals[c] += 1
      for k in topk:
        if (best if k == -1 else best[:k]).max() >= iou_thresh:
          for c in categories:
            hits[k][c] += 1
  missing = [i for i in entities.all_ids if i not in seen]
  if missing:
    image_id, sentence_id = missing[0]
    raise ScoreError(f"{path}: no prediction for {len(missing)} of the split's {len(entities.all_ids)} sentences "
                     f"to evaluate, e.g. image {image_id} sentence {sentence_id}")
  names = {k: "Upper_bound" if k == -1 else f"Recall@{k}" for k in topk}
  out = {names[k]: hits[k]["all"] / totals["all"] for k in topk}
  for c in sorted(set(totals) - {"all"}):
    out.update({f"{names[k]}/{c}": hits[k][c] / totals[c] for k in topk})
  return out


def split_images(path: str | pathlib.Path) -> list[str]:
  """The Flickr ids of a split: from its image list (`test.txt`, one id a line) or its MDETR-format json
  (`final_flickr_separateGT_test.json`: the distinct `original_img_id` of its images, in order)."""
  path = pathlib.Path(path)
  if path.suffix == ".json":
    gt = load_json(path, "annotation")
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
      raise ScoreError(f"{path}: not an MDETR-format Flickr30k file (images with original_img_id)")
    ids = []
    for n, im in enumerate(gt["images"]):
      image_id = im.get("original_img_id") if isinstance(im, dict) else None
      if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise ScoreError(f"{path}: images[{n}] has original_img_id {image_id!r}; expected a Flickr image id")
      ids.append(str(image_id))
  else:
    try:
      ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (FileNotFoundError, IsADirectoryError) as e:
      raise ScoreError(f"annotation file {path} does not exist") from e
    except UnicodeDecodeError as e:
      raise ScoreError(f"{path}: not UTF-8 text ({e})") from e
  ids = list(dict.fromkeys(i for i in ids if i))
  if not ids:
    raise ScoreError(f"{path}: lists no image")
  return ids


def score_files(annotations: str | pathlib.Path, results: str | pathlib.Path, *,
                flickr_entities: str | pathlib.Path | None = None, merge_boxes: bool = False) -> dict[str, float]:
  """Score a results file on the split `annotations` lists; `flickr_entities` (default: the folder of
  `annotations`) holds Sentences/ and Annotations/."""
  annotations, results = pathlib.Path(annotations), pathlib.Path(results)
  root = annotations.parent if flickr_entities is None else pathlib.Path(flickr_entities)
  entities = Entities(root, split_images(annotations), merge_boxes=merge_boxes)
  return score(entities, load_json(results, "results"), path=results)


def run_benchmark(job):
  """Each caption of a prepared Flickr30k Entities split (MDETR's json: one entry per sentence) prompted with the
  sentence as the Entities files write it, its evaluated phrases the phrases; each phrase's detections ranked by
  score are its boxes (a phrase the model found nothing for gets one empty box: a miss)."""
  from glipjax.data import prompting
  from glipjax.evaluators import benchmark, common
  dataset = job.dataset()
  split_file = job.annotations(dataset)  # the split's image list or MDETR json
  prepared_from = pathlib.Path(dataset.annotations)  # which sentence each prepared caption is
  if not dataset.annotations or not prepared_from.exists():
    raise FileNotFoundError(f"dataset {dataset.name!r} was prepared from {dataset.annotations or 'an unrecorded file'}"
                            ", which is needed to match its captions to Flickr30k sentences")
  root = pathlib.Path(job.benchmark.flickr_entities) if job.benchmark.flickr_entities else split_file.parent
  entities = Entities(root, split_images(split_file), merge_boxes=job.config.eval.flickr_merge_boxes)
  entries = _sentence_of_entry(prepared_from)

  def prompt(record):
    key = entries.get(record["image_id"])
    if key is None or key[0] not in entities or key[1] >= entities.num_sentences(key[0]):
      raise ValueError(f"caption {record['image_id']} is not a sentence of the Flickr30k Entities split in {root}")
    phrases = entities.evaluated_phrases(*key) or entities.sentence(*key)["phrases"][:1]
    spans = np.array([p["span"] for p in phrases], np.int32).reshape(-1, 2)
    return prompting.Prompt(entities.sentence(*key)["text"], spans, np.full(len(record["boxes"]), -1, np.int32),
                            np.arange(1, len(spans) + 1, dtype=np.int32))

  results, detections = [], {}
  for entry, det in common.predict_split(job.predict, job.config, job.tokenizer, job.mesh, prompter=prompt,
                                         split=job.split, progress=dataset.name if job.progress else ""):
    image_id, sentence_id = entries[entry]
    detections[entry] = det
    if not entities.evaluated_phrases(image_id, sentence_id):
      continue
    boxes = []
    for phrase in range(1, len(entities.evaluated_phrases(image_id, sentence_id)) + 1):
      mine = det["category_ids"] == phrase
      order = np.argsort(-det["scores"][mine], kind="stable")
      boxes.append(benchmark.xyxy_continuous(det["boxes"][mine][order]) or [[0.0, 0.0, 0.0, 0.0]])
    results.append(dict(image_id=image_id, sentence_id=sentence_id, boxes=boxes))
  metrics = score(entities, results, path=f"the predictions on {dataset.name}/{job.split}")

  def names(record):
    key = entries[record["image_id"]]
    return {i + 1: p["phrase"] for i, p in enumerate(entities.evaluated_phrases(*key))}
  return benchmark.Result(metrics, results, benchmark.pictures(job, detections, names, dataset.name),
                          dict(flickr_mode="merged boxes" if entities.merge_boxes else "any box"))


def _sentence_of_entry(path: pathlib.Path) -> dict[int, tuple[str, int]]:
  """{MDETR image entry id: (Flickr id, sentence id)} from the MDETR-format json a split was prepared from."""
  gt = load_json(path, "annotation")
  if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
    raise ScoreError(f"{path}: not an MDETR-format Flickr30k file (images with original_img_id, sentence_id)")
  out = {}
  for n, im in enumerate(gt["images"]):
    try:
      out[int(im["id"])] = (str(im["original_img_id"]), int(im["sentence_id"]))
    except (KeyError, TypeError, ValueError) as e:
      raise ScoreError(f"{path}: images[{n}] needs id, original_img_id and sentence_id") from e
  return out
