"""Self-training: noun phrases from a real English parser (spaCy with en_core_web_sm 3.8.0) on real sentences; the
labels file's resume (a run killed mid-way, a torn last line, a changed setting) and merge with a stand-in teacher;
and `python -m glipjax.pseudo_label` end to end with a real GLIP teacher (a converted workdir, random weights)
whose output the trainer's pipeline reads."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from glipjax import config_utils, pseudo_label, sharding
from glipjax.data import pipeline, records, sources
from glipjax.data.prepare import prepare
from glipjax.evaluators.files import ScoreError
from glipjax.text import noun_phrases as np_lib
from glipjax.text.noun_phrases import noun_phrases, noun_phrases_batch
from glipjax.text.tokenizers import WordPieceTokenizer
from glipjax.tools import pseudo_label_quality as quality
from official_weights import random_official_state

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = "a an the two red blue green dog dogs cat man horse park frisbee sky mat barn old with in on of and".split()
CAPTIONS = [
    "Two dogs play with a red frisbee in the park.",
    "so beautiful!",                                # no noun phrase: dropped, the teacher is not run on it
    "A café table with crème brûlée.",              # non-ASCII spans
    "A man riding a horse next to the old barn",
    "it is here",                                   # a pronoun only: no phrase either
    "A woman in a blue dress holds her baby's hand; a dog watches them.",
    "A cat on a mat",
    # 17 phrases: more than the teacher's max_phrases (16) and its 48-token query hold
    "A red ball, a blue cube, a green cone, a yellow star, a black box, a white cup, a pink hat, an orange fish, "
    "a grey stone, a brown bag, a purple sock, a gold ring, a silver key, a tiny car, a big tree, a long road and "
    "a small boat.",
    "blue sky",
]
SIZES = [(48, 64), (64, 48), (40, 40), (30, 50), (64, 64), (56, 40), (24, 32), (48, 48), (40, 64)]


# --------------------------------------------------------------------------------------------------------------
# Noun phrases

def phrases(text):
  return [text[b:e] for b, e in noun_phrases(text)]


def test_noun_phrases_of_real_sentences():
  assert phrases("Two dogs play with a red frisbee in the park.") == ["Two dogs", "a red frisbee", "the park"]
  # Punctuation between and around phrases; determiners and numerals stay, as in Flickr30k Entities' phrases.
  assert phrases("A man, riding a horse, passes the old barn!") == ["A man", "a horse", "the old barn"]
  assert phrases('  "The cat" sleeps on a rug.') == ["The cat", "a rug"]  # quotes and leading spaces trimmed
  assert phrases("  A boy -- with a kite -- runs...") == ["A boy", "a kite"]
  # Pronouns name nothing to detect; a possessive stays inside its phrase.
  assert phrases("A woman in a blue dress holds her baby's hand; a dog watches them.") == [
      "A woman", "a blue dress", "her baby's hand", "a dog"]
  assert phrases("it is here") == phrases("so beautiful!") == phrases("Wow!") == []
  assert phrases("a photo of a red circle and a blue square\nnext line") == ["a photo", "a red circle",
                                                                             "a blue square"]


def test_noun_phrase_spans_index_the_original_text():
  text = "The café's crème brûlée sits on a wooden table."
  spans = noun_phrases(text)
  assert spans == [(0, 23), (32, 46)]  # code points: 'é' is one character, as Python indexes the string
  assert [text[b:e] for b, e in spans] == ["The café's crème brûlée", "a wooden table"]
  assert phrases("🙂 a smiling emoji") == ["a smiling emoji"]  # an emoji alone is no phrase
  assert noun_phrases("") == noun_phrases("   \n ") == []
  # The batch variant (spaCy's nlp.pipe) gives what one call each gives.
  texts = CAPTIONS + ["", text]
  assert noun_phrases_batch(texts) == [noun_phrases(t) for t in texts]
  assert "en_core_web_sm 3.8.0" in np_lib.version()


# --------------------------------------------------------------------------------------------------------------
# A captions dataset, a small config and tokenizer, and a stand-in teacher

def write_captions(root: pathlib.Path, captions=CAPTIONS, sizes=SIZES) -> pathlib.Path:
  rng = np.random.default_rng(0)
  (root / "im").mkdir(parents=True)
  lines = []
  for i, (caption, (h, w)) in enumerate(zip(captions, sizes)):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "im" / f"{i}.jpg")
    lines.append(json.dumps(dict(image=f"{i}.jpg", caption=caption), ensure_ascii=False))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root / "captions.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A prepared captions dataset `caps` (train split) and the WordPiece vocabulary of the tests' teachers."""
  root = tmp_path_factory.mktemp("pseudo")
  prepare("captions", str(write_captions(root)), str(root / "im"), "caps", str(root / "tfds"))
  vocab = root / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", ";", "'"] + WORDS) + "\n")
  return root


def teacher_config(vocab, **overrides):
  """The tiny GLIP cut to one block per stage and tower (compile time), on 64-pixel canvases."""
  base = {"data.canvas": (64, 64), "data.max_size": 64, "data.eval_short_side": 64, "data.tokenizer": "wordpiece",
          "data.tokenizer_path": str(vocab), "model.max_query_len": 48, "eval.global_batch_size": 4,
          "model.swin.depths": (1, 1, 1, 1), "model.dyhead.num_layers": 1, "model.language.num_layers": 1}
  base.update(overrides)
  return config_utils.apply_overrides(tiny.get_config(), base)


def stand_in_teacher(calls: list):
  """predict(global batch) -> detections like the real one's: one box per phrase the prompt reads, in the image's
  corner of the canvas, scored by the image's content and the phrase's place (some above 0.5, some below)."""
  def predict(batch):
    image, hw, mask = (np.asarray(batch[k]) for k in ("image", "image_hw", "phrase_mask"))
    calls.append(len(mask))
    b, p = mask.shape
    phrase = np.broadcast_to(np.arange(p), (b, p)).astype(np.float32)
    scores = (image.reshape(b, -1).mean(1, keepdims=True) / 255 * 7 + 0.37 * phrase) % 1
    boxes = np.stack([phrase, np.full((b, p), 2.0), np.broadcast_to(hw[:, 1:] - 3.0, (b, p)),
                      np.broadcast_to(hw[:, :1] - 1.0, (b, p))], -1)
    return dict(boxes=boxes.astype(np.float32), scores=scores.astype(np.float32),
                labels=(phrase + 1).astype(np.int32), valid=mask)
  return predict


@pytest.fixture(scope="module")
def stand_in(data):
  config = teacher_config(data / "vocab.txt")
  mesh = sharding.make_mesh(config.mesh)
  dataset = sources.open_dataset(data / "tfds", "caps", "train")
  return config, mesh, WordPieceTokenizer(data / "vocab.txt"), dataset


def label_and_merge(stand_in, data_dir, out, *, threshold=0.5, calls=None, chunk=3, dataset=None):
  config, mesh, tok, caps = stand_in
  dataset = dataset or caps
  paths = pseudo_label.Paths.of(data_dir, out, "train")
  settings = pseudo_label.run_settings(dataset, "stand-in", 0, threshold, config)
  result = pseudo_label.label(stand_in_teacher([] if calls is None else calls), config, tok, mesh, dataset, paths,
                              threshold=threshold, settings=settings, chunk=chunk, progress=False)
  return result, pseudo_label.merge(dataset, paths, out, data_dir, settings), paths


def read_all(data_dir, name):
  ds = sources.open_dataset(data_dir, name, "train")
  return ds, [records.decode(ds.source[i]) for i in range(len(ds.source))]


@pytest.fixture(scope="module")
def reference(stand_in, data):
  """An uninterrupted run of the stand-in teacher, chunks of 3 records."""
  calls = []
  result, summary, paths = label_and_merge(stand_in, data / "tfds", "ref", calls=calls)
  return result, summary, paths, calls


# --------------------------------------------------------------------------------------------------------------
# Labelling, merging, resume

def test_the_merged_dataset_holds_the_phrases_and_boxes_the_teacher_kept(reference, data):
  result, summary, paths, calls = reference
  ds, recs = read_all(data / "tfds", "ref")
  assert ds.kind == "grounding" and ds.statistics["pseudo_label"] == summary
  expected = [noun_phrases(c) for c in CAPTIONS]
  # The teacher labelled each caption with a phrase once: one batch of 4 rows per chunk of 3 records.
  prompted = sum(1 for e in expected if e)
  assert result == dict(todo=len(CAPTIONS), labelled=prompted) and calls == [4, 4, 4]
  assert summary["images"] == len(CAPTIONS) and summary["captions_without_phrase"] == 2
  assert summary["phrases_found"] == sum(len(e) for e in expected) == 32
  assert summary["phrases_unread"] >= 1 + (17 - 16)  # the long caption: beyond max_phrases and the query length
  assert summary["phrases_prompted"] == summary["phrases_found"] - summary["phrases_unread"]
  kept_images = summary["images_with_box"]
  assert 0 < kept_images < len(CAPTIONS) - 2 and len(recs) == kept_images
  assert summary["images_dropped_without_box"] == len(CAPTIONS) - kept_images
  boxes = 0
  for r in recs:
    caption, hw = r["caption"], r["image"].shape[:2]
    index = CAPTIONS.index(caption)
    assert SIZES[index] == hw and r["image_id"] == index + 1  # the captions file's line number
    # Every stored phrase is one of the caption's noun phrases and has a box; every box has a phrase.
    spans = [tuple(s) for s in r["phrase_spans"]]
    assert set(spans) <= set(expected[index]) and spans == sorted(spans)
    assert sorted(set(r["box_phrase"].tolist())) == list(range(len(spans)))
    assert (r["boxes"][:, 2] > r["boxes"][:, 0]).all() and (r["boxes"][:, 3] > r["boxes"][:, 1]).all()
    assert r["boxes"].min() >= 0 and (r["boxes"][:, 2] <= hw[1] - 1).all() and (r["boxes"][:, 3] <= hw[0] - 1).all()
    if max(hw) == 64:  # not resized: the stand-in's x1 is the index of the box's phrase in the prompt
      assert [box[0] for box in r["boxes"]] == [expected[index].index(spans[k]) for k in r["box_phrase"]]
    boxes += len(r["boxes"])
  assert boxes == summary["boxes_kept"] > 0
  # Scores: the kept ones all >= 0.5 and counted once; the candidates are every detection the teacher gave.
  kept, cands = summary["kept_scores"], summary["candidate_scores"]
  assert kept["count"] == boxes == sum(kept["histogram"]["counts"]) and kept["quantiles"]["p0"] >= 0.5
  assert sum(kept["histogram"]["counts"][:10]) == 0
  assert cands["count"] == summary["phrases_prompted"] == sum(cands["histogram"]["counts"]) > boxes
  assert json.loads(paths.stats.read_text()) == summary
  lines = [json.loads(l) for l in paths.labels.read_text(encoding="utf-8").splitlines()]
  assert sorted(l["index"] for l in lines) == list(range(len(CAPTIONS)))


def test_a_killed_run_resumes_where_it_stopped(reference, stand_in, data):
  config, mesh, tok, dataset = stand_in
  paths = pseudo_label.Paths.of(data / "tfds", "resumed", "train")
  settings = pseudo_label.run_settings(dataset, "stand-in", 0, 0.5, config)
  calls = []
  teacher = stand_in_teacher(calls)

  def killed(batch):  # the teacher's process dies in its third batch
    if len(calls) == 2:
      raise KeyboardInterrupt
    return teacher(batch)
  with pytest.raises(KeyboardInterrupt):
    pseudo_label.label(killed, config, tok, mesh, dataset, paths, threshold=0.5, settings=settings, chunk=3,
                       progress=False)
  done = {json.loads(l)["index"] for l in paths.labels.read_text(encoding="utf-8").splitlines()}
  assert 0 < len(done) < len(CAPTIONS)
  torn = next(i for i in range(len(CAPTIONS)) if i not in done and noun_phrases(CAPTIONS[i]))
  with open(paths.labels, "a", encoding="utf-8") as f:  # a line cut short by the kill
    f.write(json.dumps(dict(index=torn, found=1, spans=[[0, 3]], boxes=[], scores=[], phrases=[]))[:30])

  # A changed setting is refused: labels of two thresholds must not mix.
  with pytest.raises(pseudo_label.PseudoLabelError, match="threshold=0.5 .now 0.3."):
    pseudo_label.label(teacher, config, tok, mesh, dataset, paths, threshold=0.3,
                       settings=dict(settings, threshold=0.3), chunk=3, progress=False)

  calls.clear()
  result, summary, _ = label_and_merge(stand_in, data / "tfds", "resumed", calls=calls)
  todo = [i for i in range(len(CAPTIONS)) if i not in done]
  assert result == dict(todo=len(todo), labelled=sum(1 for i in todo if noun_phrases(CAPTIONS[i])))
  # Nothing labelled before the kill ran again (the torn record did): one batch per chunk of 3 records to do.
  assert len(calls) == sum(1 for k in range(0, len(todo), 3) if any(noun_phrases(CAPTIONS[i]) for i in todo[k:k + 3]))
  lines = [json.loads(l) for l in paths.labels.read_text(encoding="utf-8").splitlines()]
  assert sorted(l["index"] for l in lines) == list(range(len(CAPTIONS)))  # each record once, none lost
  assert summary == reference[1]
  _, expected = read_all(data / "tfds", "ref")
  _, got = read_all(data / "tfds", "resumed")
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    for key in ("caption", "image_id", "file_name"):
      assert a[key] == b[key]
    for key in ("image", "boxes", "phrase_spans", "span_phrase", "box_phrase"):
      np.testing.assert_array_equal(a[key], b[key])


def test_torn_and_unreadable_lines_are_dropped_from_the_labels_file(tmp_path):
  path = tmp_path / "labels.jsonl"
  good = [dict(index=0, found=1, spans=[[0, 3]], boxes=[[1, 2, 3, 4]], scores=[0.9], phrases=[0], candidates=[]),
          dict(index=2, skipped="image could not be decoded")]
  bad = [dict(index=7, skipped="beyond the records"), dict(index=1, found=1, spans=[[0, 3]], boxes=[[1, 2, 3]],
                                                          scores=[0.9], phrases=[0], candidates=[])]
  text = "".join(json.dumps(x) + "\n" for x in [good[0]] + bad + [good[1], good[0]]) + "not json\n" + '{"index": 3'
  path.write_text(text)
  assert pseudo_label.read_labels(path, 5) == {0: good[0], 2: good[1]}
  assert path.read_text() == "".join(json.dumps(x) + "\n" for x in good)  # appending continues after these


def test_an_unreadable_image_is_skipped_and_counted(stand_in, data):
  class Damaged:
    def __init__(self, source, bad):
      self.source, self.bad = source, bad

    def __len__(self):
      return len(self.source)

    def __getitem__(self, i):
      if i == self.bad:
        raise ValueError("corrupt JPEG data")
      return self.source[i]

  dataset = stand_in[3]
  damaged = dataclasses.replace(dataset, source=Damaged(dataset.source, 0))
  damaged.__dict__["image_sizes"] = dataset.image_sizes
  _, summary, paths = label_and_merge(stand_in, data / "tfds", "damaged", dataset=damaged)
  assert summary["images_skipped"] == 1
  line = next(json.loads(l) for l in paths.labels.read_text().splitlines() if json.loads(l)["index"] == 0)
  assert line == dict(index=0, skipped="image could not be decoded")
  _, recs = read_all(data / "tfds", "damaged")
  assert CAPTIONS[0] not in [r["caption"] for r in recs] and recs


# --------------------------------------------------------------------------------------------------------------
# The command, with a real teacher



@pytest.fixture(scope="module")
def teacher(data):
  """A converted workdir (step 0) of the cut-down tiny GLIP with random weights."""
  from glipjax.interop import workdirs
  config = teacher_config(data / "vocab.txt")
  workdirs.convert_official(random_official_state(config.model), config, data / "teacher")
  return data / "teacher"


def command(teacher, data, out, *extra, dataset="caps"):
  return ["--teacher", str(teacher), "--dataset", dataset, "--data_dir", str(data / "tfds"), "--out_name", out,
          "--no_progress", *extra]


def error_of(capsys, argv) -> str:
  assert pseudo_label.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


REAL = ("--config.eval.pre_nms_thresh=0.0", "--config.eval.detections_per_img=5")  # 5 detections per image


@pytest.fixture(scope="module")
def real_run(teacher, data):
  """`python -m glipjax.pseudo_label` (in this process) with the real teacher, GLIP's threshold 0.5. Random
  weights score about 0.42..0.53: the threshold keeps some of the candidates and drops the others."""
  import contextlib
  import io
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = pseudo_label.main(command(teacher, data, "real", *REAL))
  assert code == 0, err.getvalue()[-3000:]
  return out.getvalue()


def test_the_command_labels_with_a_real_teacher_and_the_trainer_reads_the_output(real_run, teacher, data, capsys):
  assert "pseudo-labelled caps/train" in real_run and "boxes kept (score >= 0.5)" in real_run
  paths = pseudo_label.Paths.of(data / "tfds", "real", "train")
  summary = json.loads(paths.stats.read_text())
  assert summary["step"] == 0 and summary["teacher"] == str(teacher.absolute())
  candidates, kept = summary["candidate_scores"], summary["kept_scores"]
  assert candidates["count"] == 5 * (len(CAPTIONS) - 2)  # 5 detections per prompted image
  assert 0 < kept["count"] == summary["boxes_kept"] < candidates["count"] and kept["quantiles"]["p0"] >= 0.5
  assert summary["phrases_with_box"] <= summary["phrases_prompted"]
  ds, recs = read_all(data / "tfds", "real")
  assert ds.kind == "grounding" and len(recs) == summary["images_with_box"] > 0
  for r in recs:
    assert len(r["boxes"]) and (r["boxes"][:, 2:] < np.array(r["image"].shape[1::-1])).all()
    assert set(map(tuple, r["phrase_spans"])) <= set(noun_phrases(r["caption"]))

  # The trainer's pipeline reads it as a training source.
  config = teacher_config(data / "vocab.txt", **{"data.sources": (("real", 1.0),), "data.data_dir": str(data / "tfds"),
                                                  "data.train_short_sides": (56, 64), "train.global_batch_size": 2})
  batch = next(pipeline.make_pipeline(config.data, "train", WordPieceTokenizer(data / "vocab.txt"),
                                      global_batch_size=2, train=True, seed=0, max_query_len=48))
  assert batch["box_mask"].any(1).all() and batch["positive_map"][batch["box_mask"]].sum(1).min() > 0

  # Done: a second run is refused until --overwrite; the output is not a captions dataset to label.
  assert "already exists" in error_of(capsys, command(teacher, data, "real", *REAL))
  assert "is a grounding dataset" in error_of(capsys, command(teacher, data, "again", dataset="real"))


def test_bad_input_is_a_one_line_error(teacher, data, capsys, tmp_path):
  assert "--threshold must be in (0, 1]" in error_of(capsys, command(teacher, data, "x", "--threshold", "0"))
  assert "--threshold must be in (0, 1]" in error_of(capsys, command(teacher, data, "x", "--threshold", "1.5"))
  assert "not prepared" in error_of(capsys, command(teacher, data, "x", dataset="nope"))
  assert "not found" in error_of(capsys, command(tmp_path / "no_run", data, "x"))
  bare = tmp_path / "bare"  # a config and no checkpoint
  bare.mkdir()
  (bare / "config.json").write_text((teacher / "config.json").read_text())
  assert "checkpoint" in error_of(capsys, command(bare, data, "x"))
  assert "unknown config key" in error_of(capsys, command(teacher, data, "x", "--config.eval.nope=1"))
  assert "invalid --out_name" in error_of(capsys, command(teacher, data, "caps"))


@pytest.mark.slow
def test_two_processes_label_what_one_process_labels(real_run, teacher, data):
  """Each process decodes its rows of every batch, the teacher runs sharded over both, process 0 writes: the
  same dataset as one process writes."""
  import os
  args = command(teacher, data, "two", *REAL, "--chunk", "4")
  proc = subprocess.run([sys.executable, "-m", "launch.local", "--num_processes", "2", "--cpu_devices", "1", "--",
                         "-m", "glipjax.pseudo_label", *args], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "[0] pseudo-labelled caps/train" in proc.stdout and "[1] pseudo-labelled" not in proc.stdout
  one, two = (json.loads(pseudo_label.Paths.of(data / "tfds", n, "train").stats.read_text()) for n in ("real", "two"))
  same = lambda s: {k: v for k, v in s.items() if k not in ("kept_scores", "candidate_scores")}
  assert same(one) == same(two)
  for key in ("kept_scores", "candidate_scores"):
    assert one[key]["count"] == two[key]["count"]
  _, a = read_all(data / "tfds", "real")
  _, b = read_all(data / "tfds", "two")
  assert [r["caption"] for r in a] == [r["caption"] for r in b]
  for x, y in zip(a, b):
    np.testing.assert_allclose(x["boxes"], y["boxes"], atol=0.02)
    np.testing.assert_array_equal(x["box_phrase"], y["box_phrase"])


@pytest.mark.slow
def test_a_student_trains_on_the_pseudo_labels(real_run, data, tmp_path):
  """The self-training loop closed: `python -m glipjax.train`'s trainer takes the output as its one source."""
  from glipjax import trainer
  config = teacher_config(data / "vocab.txt", **{
      "data.sources": (("real", 1.0),), "data.data_dir": str(data / "tfds"), "data.train_short_sides": (56, 64),
      "data.detection_prompt_prob": 0.0, "train.global_batch_size": 2, "train.num_steps": 2, "train.log_every": 1,
      "train.checkpoint_every": 2, "train.eval_every": 0, "optim.warmup_steps": 1, "checkpoint.async_save": False,
      "checkpoint.best_metric": ""})
  final = trainer.train_and_evaluate(config, tmp_path / "student", progress=False)
  assert final["steps"] == 2
  rows = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0


def test_pseudo_label_quality_against_hidden_ground_truth(tmp_path):
  truth_file = tmp_path / "instances.json"
  truth_file.write_text(json.dumps({
      "images": [{"id": 7, "file_name": "sub/a.png", "height": 64, "width": 64}],
      "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}],
      "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10]},
                      {"id": 2, "image_id": 7, "category_id": 2, "bbox": [30, 30, 20, 20]}]}))
  truth = quality.load_truth(truth_file)
  caption = "two red circles and a blue square"
  record = dict(file_name=b"a.png", caption=caption.encode(), phrase_spans=np.array([[0, 15], [20, 33]]),
                boxes=np.array([[0, 0, 10, 10],      # on the red circle, named by phrase 0: right
                                [31, 31, 50, 50],    # on the blue square (IoU 0.9) but named "two red circles"
                                [12, 12, 20, 20]]),  # on nothing
                box_phrase=np.array([0, 0, 1]))
  stranger = dict(record, file_name=b"b.png")
  m = quality.measure([record, stranger], truth)
  assert m["boxes"] == 3 and m["boxes_without_ground_truth"] == 3
  assert m["on_an_object"] == pytest.approx(2 / 3) and m["right_kind"] == pytest.approx(1 / 3)
  assert m["per_kind"] == {"blue square": 0.0, "red circle": 1.0}
  assert quality.names_kind("Two red circles", "red circle") and not quality.names_kind("a red square", "red circle")
  truth_file.write_text("{}")
  with pytest.raises(ScoreError, match="instances.json: not a COCO detection json"):
    quality.load_truth(truth_file)


@pytest.mark.slow
def test_the_embedded_teacher_student_loop_runs_as_the_readme_writes_it(tmp_path):
  """The README's command sequence, each command as a user types it (budgets shrunk by --config overrides): files
  in the real formats -> prepare -> teacher -> pseudo_label -> student; both evaluate on the embedded task."""
  def run(*argv):
    out = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (argv, out.stderr[-3000:])
    return out.stdout

  files, data_dir = tmp_path / "files", tmp_path / "tfds"
  run("glipjax.tools.synthetic_files", "--out", str(files / "st_labelled"), "--seed", "31", "--count", "24",
      "--image_size", "64")
  run("glipjax.tools.synthetic_files", "--out", str(files / "st_unlabelled"), "--seed", "32", "--count", "24",
      "--image_size", "64")
  for fmt, annotations, part, name in (("coco", "instances.json", "st_labelled", "st_labelled_det"),
                                       ("mdetr", "grounding.json", "st_labelled", "st_labelled_gnd"),
                                       ("captions", "captions.jsonl", "st_unlabelled", "st_unlabelled")):
    run("glipjax.data.prepare", "--format", fmt, "--annotations", str(files / part / annotations), "--images",
        str(files / part / "images"), "--name", name, "--split", "train", "--data_dir", str(data_dir))
  small = [f"--config.data.data_dir={data_dir}", "--config.data.eval_source=synthetic_grounding/tiny",
           "--config.data.canvas=(64, 64)", "--config.data.train_short_sides=(56, 64)", "--config.data.max_size=64",
           "--config.data.eval_short_side=64", "--config.train.global_batch_size=4", "--config.train.num_steps=4",
           "--config.train.eval_every=4", "--config.train.checkpoint_every=4", "--config.eval.num_pictures=1"]
  run("glipjax.train", "--config", "configs/self_training.py:teacher", "--workdir", str(tmp_path / "teacher"),
      *small)
  run("glipjax.pseudo_label", "--teacher", str(tmp_path / "teacher"), "--dataset", "st_unlabelled", "--data_dir",
      str(data_dir), "--out_name", "st_pseudo", "--threshold", "0.01", "--config.eval.pre_nms_thresh=0.0")
  pseudo = sources.open_dataset(data_dir, "st_pseudo", "train")
  assert pseudo.kind == "grounding" and len(pseudo.source) > 0
  report = run("glipjax.tools.pseudo_label_quality", "--data_dir", str(data_dir), "--dataset", "st_pseudo",
               "--truth", str(files / "st_unlabelled" / "instances.json"))
  assert "on an object" in report and "(0 without)" in report
  run("glipjax.train", "--config", "configs/self_training.py:student", "--workdir", str(tmp_path / "student"),
      *small)
  for who in ("teacher", "student"):
    final = json.loads((tmp_path / who / "final_metrics.json").read_text())
    assert {"detection", "grounding"} <= set(final) and final["steps"] == 4, who
