"""Flickr30k Entities recall@k (MDETR's official protocol) on a hand-built Flickr30k-Entities tree."""
import json

import numpy as np
import pytest

from glipjax.evaluators import flickr30k
from glipjax.evaluators.files import ScoreError

SENTENCES = {
    "100": [
        # EN#3 is the scene (no box) and drops out; EN#4 has two types; EN#4 gets its box from a two-name object.
        "[/EN#1/people A man] in [/EN#2/clothing a red hat] talks to [/EN#4/people/other his twin] on "
        "[/EN#3/scene the street] .",
        "",  # a blank line takes no sentence id
        # The same entity twice; EN#5 is not visible (nobndbox).
        "[/EN#1/people The man] looks at [/EN#1/people himself] in [/EN#5/other a mirror] .",
        # Nothing with a box: not a sentence to evaluate.
        "[/EN#6/notvisual Nobody] is [/EN#3/scene outside] .",
    ],
    "200": ["[/EN#10/animals A dog] chases [/EN#11/other a ball] .", "[/EN#10/animals The dog] runs ."],
}


def _object(names, box=None, nobox=0, scene=0):
  tags = "".join(f"<name>{n}</name>" for n in names)
  if box is not None:
    x1, y1, x2, y2 = box
    return (f"<object>{tags}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
            "</object>")
  return f"<object>{tags}<nobndbox>{nobox}</nobndbox><scene>{scene}</scene></object>"


OBJECTS = {
    "100": [_object(["1"], (10, 10, 30, 50)), _object(["1", "4"], (60, 10, 80, 50)), _object(["2"], (10, 0, 30, 10)),
            _object(["3"], scene=1), _object(["5", "6"], nobox=1)],
    "200": [_object(["10"], (0, 0, 10, 10)), _object(["11"], (1, 1, 11, 11))],
}


@pytest.fixture
def tree(tmp_path):
  """A Flickr30k Entities folder: Sentences/, Annotations/ and the split's image list test.txt."""
  (tmp_path / "Sentences").mkdir()
  (tmp_path / "Annotations").mkdir()
  for image_id, lines in SENTENCES.items():
    (tmp_path / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><filename>{image_id}.jpg</filename><size><width>100</width><height>80</height>"
        f"<depth>3</depth></size>{''.join(OBJECTS[image_id])}</annotation>")
  (tmp_path / "test.txt").write_text("100\n200\n")
  return tmp_path


MISS = [90, 70, 99, 79]
# One ranked box list per evaluated phrase. Hits by phrase (any-box ground truth) at @1 @5 @10 upper bound:
PREDICTIONS = [
    dict(image_id="100", sentence_id=0, boxes=[
        [[10, 10, 30, 50]],  # A man: box A exactly: 1 1 1 1 (merged [10, 10, 80, 50]: IoU 800/2800, 0 0 0 0)
        [MISS] * 5 + [[10, 0, 30, 10]],  # a red hat, found 6th: 0 0 1 1
        [[0, 0, 5, 5], [60, 10, 80, 50]],  # his twin, found 2nd: 0 1 1 1
    ]),
    dict(image_id="100", sentence_id=1, boxes=[
        [[10, 10, 80, 50]],  # The man: the union of both boxes, IoU 0.29 with each: 0 0 0 0 (merged: 1 1 1 1)
        [[60, 10, 80, 50]],  # himself: box B: 1 1 1 1 (merged: 0 0 0 0)
    ]),
    dict(image_id=200, sentence_id=0, boxes=[
        [[0, 0, 10, 5]],  # A dog: IoU 50/100 exactly 0.5, a hit: 1 1 1 1
        # a ball: the xml's [1, 1, 11, 11] as written. IoU 48/100 < 0.5 (with the +1 convention 63.8/121 = 0.53
        # would hit), then the exact half 50/100 found 12th: 0 0 0 1.
        [[1, 1, 11, 5.8]] + [MISS] * 10 + [[1, 1, 11, 6]],
    ]),
    dict(image_id=200, sentence_id=1, boxes=[[MISS]]),  # The dog: 0 0 0 0
]


def _write(tmp_path, predictions, name="res.json"):
  path = tmp_path / name
  path.write_text(json.dumps(predictions))
  return path


def test_parse_sentence_text_and_spans():
  s = flickr30k.parse_sentence("[/EN#18/people A man] with [/EN#19/clothing pierced ears] is wearing "
                               "[/EN#20/clothing glasses] and [/EN#21/clothing an orange hat] .")
  assert s["text"] == "A man with pierced ears is wearing glasses and an orange hat ."
  assert [p["phrase"] for p in s["phrases"]] == ["A man", "pierced ears", "glasses", "an orange hat"]
  assert [p["phrase_id"] for p in s["phrases"]] == ["18", "19", "20", "21"]
  assert [p["first_word_index"] for p in s["phrases"]] == [0, 3, 7, 9]
  assert [p["span"] for p in s["phrases"]] == [(0, 5), (11, 23), (35, 42), (47, 60)]
  for p in s["phrases"]:
    assert s["text"][p["span"][0]:p["span"][1]] == p["phrase"]
  # Runs of spaces collapse (the official reader splits on whitespace); several types per entity.
  s = flickr30k.parse_sentence("  Look at  [/EN#5/people/other  his   twin]  .")
  assert s["text"] == "Look at his twin ."
  assert s["phrases"] == [dict(phrase="his twin", phrase_id="5", phrase_type=["people", "other"],
                               first_word_index=2, span=(8, 16))]
  with pytest.raises(ScoreError, match="malformed entity markup"):
    flickr30k.parse_sentence("[oops a man] .")


def test_read_files(tree):
  sentences = flickr30k.read_sentences(tree / "Sentences" / "100.txt")
  assert len(sentences) == 3  # the blank line is skipped
  assert sentences[1]["text"] == "The man looks at himself in a mirror ."
  assert [p["phrase_id"] for p in sentences[1]["phrases"]] == ["1", "1", "5"]
  a = flickr30k.read_annotations(tree / "Annotations" / "100.xml")
  assert (a["width"], a["height"]) == (100, 80)
  # Coordinates as written (no 1 subtracted); the two-name object's box goes to both entities.
  assert a["boxes"] == {"1": [[10, 10, 30, 50], [60, 10, 80, 50]], "4": [[60, 10, 80, 50]], "2": [[10, 0, 30, 10]]}
  assert a["scene"] == ["3"] and a["nobox"] == ["5", "6"]
  with pytest.raises(ScoreError, match="300.xml does not exist"):
    flickr30k.read_annotations(tree / "Annotations" / "300.xml")
  (tree / "bad.xml").write_text("<annotation><size><width>1</width><height>x</height></size></annotation>")
  with pytest.raises(ScoreError, match="bad.xml: <height> is 'x'"):
    flickr30k.read_annotations(tree / "bad.xml")


def test_entities_evaluated_phrases(tree):
  e = flickr30k.Entities(tree, ["100", "200"])
  # Sentence 2 of image 100 has no phrase with a box: not required.
  assert e.all_ids == [("100", 0), ("100", 1), ("200", 0), ("200", 1)]
  assert [p["phrase"] for p in e.evaluated_phrases("100", 0)] == ["A man", "a red hat", "his twin"]
  assert [p["phrase"] for p in e.evaluated_phrases("100", 1)] == ["The man", "himself"]
  assert e.evaluated_phrases("100", 2) == []
  assert e.sentence("100", 0)["text"] == "A man in a red hat talks to his twin on the street ."
  np.testing.assert_array_equal(e.boxes("100", "1"), [[10, 10, 30, 50], [60, 10, 80, 50]])
  np.testing.assert_array_equal(flickr30k.Entities(tree, [100], merge_boxes=True).boxes(100, "1"),
                                [[10, 10, 80, 50]])


def test_recall_any_box_and_per_type(tree):
  metrics = flickr30k.score(flickr30k.Entities(tree, ["100", "200"]), PREDICTIONS)
  assert metrics == pytest.approx({
      "Recall@1": 3 / 8, "Recall@5": 4 / 8, "Recall@10": 5 / 8, "Upper_bound": 6 / 8,
      "Recall@1/people": 2 / 4, "Recall@5/people": 3 / 4, "Recall@10/people": 3 / 4, "Upper_bound/people": 3 / 4,
      "Recall@1/clothing": 0, "Recall@5/clothing": 0, "Recall@10/clothing": 1, "Upper_bound/clothing": 1,
      "Recall@1/other": 0, "Recall@5/other": 1 / 2, "Recall@10/other": 1 / 2, "Upper_bound/other": 1,
      "Recall@1/animals": 1 / 2, "Recall@5/animals": 1 / 2, "Recall@10/animals": 1 / 2,
      "Upper_bound/animals": 1 / 2,
  })
  assert list(metrics)[:4] == ["Recall@1", "Recall@5", "Recall@10", "Upper_bound"]
  # A stricter threshold drops the exact-half hits (the dog @1, the ball's 12th box).
  strict = flickr30k.score(flickr30k.Entities(tree, ["100", "200"]), PREDICTIONS, topk=(1, -1), iou_thresh=0.51)
  assert (strict["Recall@1"], strict["Upper_bound"]) == pytest.approx((2 / 8, 4 / 8))
  assert "Recall@5" not in strict


def test_recall_merged_boxes(tree):
  metrics = flickr30k.score(flickr30k.Entities(tree, ["100", "200"], merge_boxes=True), PREDICTIONS)
  assert {k: v for k, v in metrics.items() if "/" not in k or k.endswith("/people")} == pytest.approx({
      "Recall@1": 2 / 8, "Recall@5": 3 / 8, "Recall@10": 4 / 8, "Upper_bound": 5 / 8,
      "Recall@1/people": 1 / 4, "Recall@5/people": 2 / 4, "Recall@10/people": 2 / 4, "Upper_bound/people": 2 / 4,
  })


def test_iou_official_convention():
  gt = np.array([[1., 1, 11, 11]])
  np.testing.assert_allclose(flickr30k.iou(np.array([[1., 1, 11, 6], [1, 1, 11, 5.8], [20, 20, 30, 30]]), gt),
                             [[0.5], [0.48], [0]])


def test_unevaluated_sentence_is_optional_and_ignored(tree):
  e = flickr30k.Entities(tree, ["100", "200"])
  base = flickr30k.score(e, PREDICTIONS)
  # The official evaluator skips predictions for a sentence without evaluated phrases, even with boxes.
  assert flickr30k.score(e, PREDICTIONS + [dict(image_id="100", sentence_id=2, boxes=[])]) == base
  assert flickr30k.score(e, PREDICTIONS + [dict(image_id="100", sentence_id=2, boxes=[[MISS]])]) == base


@pytest.mark.parametrize("change, message", [
    (lambda p: {"a": p}, "res.json: a Flickr30k results file is a JSON list"),
    (lambda p: p[:1] + [{"image_id": "100", "boxes": []}] + p[2:], "res.json: record 1 needs image_id, sentence_id"),
    (lambda p: p + [dict(image_id="999", sentence_id=0, boxes=[])], "record 4 names image_id '999', which is not"),
    (lambda p: p + [dict(image_id="100", sentence_id=3, boxes=[])], r"record 4 \(image 100 sentence 3\): image 100 "
                                                                    r"has sentences 0..2"),
    (lambda p: p + [dict(image_id="100", sentence_id=1.5, boxes=[])], "record 4 has sentence_id 1.5"),
    (lambda p: [dict(p[0], boxes=p[0]["boxes"][:2])] + p[1:], r"record 0 \(image 100 sentence 0\) has box lists "
                                                              "for 2 phrases; the sentence has 3"),
    (lambda p: p[:3] + [dict(p[3], boxes=[[[1, 2, 3]]])], r"record 3 \(image 200 sentence 1\) phrase 0 \('The dog'\)"),
    (lambda p: p[:3] + [dict(p[3], boxes=[[[5, 5, 1, 1]]])], "phrase 0 .*x1 <= x2"),
    # An empty list for a phrase: the official evaluator fails on it too (box_area's 2-d assertion).
    (lambda p: p[:3] + [dict(p[3], boxes=[[]])], r"record 3 \(image 200 sentence 1\) phrase 0 .*non-empty"),
    (lambda p: p[:3] + [dict(p[3], boxes=[[MISS]]), p[3]], r"record 4 \(image 200 sentence 1\) repeats record 3"),
    (lambda p: [dict(p[3], image_id="200")] + p[:3] + [dict(p[3], image_id=200)], "record 4 .* repeats record 0"),
    (lambda p: p[:2] + p[3:], "no prediction for 1 of the split's 4 sentences to evaluate, e.g. image 200 "
                              "sentence 0"),
])
def test_bad_predictions_name_the_file_and_record(tree, change, message):
  path = _write(tree, change([dict(p) for p in PREDICTIONS]))
  with pytest.raises(ScoreError, match=message) as info:
    flickr30k.score_files(tree / "test.txt", path)
  assert str(path) in str(info.value)


def test_score_files_image_list_and_mdetr_json(tree, tmp_path_factory):
  results = _write(tree, PREDICTIONS)
  expected = flickr30k.score(flickr30k.Entities(tree, ["100", "200"]), PREDICTIONS)
  assert flickr30k.score_files(tree / "test.txt", results) == expected
  merged = flickr30k.score_files(tree / "test.txt", results, merge_boxes=True)
  assert merged["Recall@1"] == pytest.approx(2 / 8)
  # MDETR's json of the split, kept elsewhere: one image entry per sentence; the split is its original_img_ids.
  other = tmp_path_factory.mktemp("mdetr")
  gt = dict(images=[dict(id=i, file_name=f"{img}.jpg", original_img_id=img, sentence_id=s, caption="")
                    for i, (img, s) in enumerate([(100, 0), (100, 1), (100, 2), (200, 0), (200, 1)])],
            annotations=[], categories=[])
  (other / "final_flickr_separateGT_test.json").write_text(json.dumps(gt))
  assert flickr30k.score_files(other / "final_flickr_separateGT_test.json", results, flickr_entities=tree) == expected
  # Only image 200 in the split: image 100's predictions name an image the split lacks.
  (tree / "val.txt").write_text("200\n\n")
  with pytest.raises(ScoreError, match="record 0 names image_id '100'"):
    flickr30k.score_files(tree / "val.txt", results)
  assert flickr30k.score_files(tree / "val.txt", _write(tree, PREDICTIONS[2:]))["Recall@1"] == pytest.approx(1 / 3)


def test_score_files_missing_inputs(tree, tmp_path_factory):
  results = _write(tree, PREDICTIONS)
  with pytest.raises(ScoreError, match="annotation file .*nope.txt does not exist"):
    flickr30k.score_files(tree / "nope.txt", results)
  with pytest.raises(ScoreError, match="results file .*absent.json does not exist"):
    flickr30k.score_files(tree / "test.txt", tree / "absent.json")
  elsewhere = tmp_path_factory.mktemp("elsewhere")
  (elsewhere / "test.txt").write_text("100\n")
  with pytest.raises(ScoreError, match=f"folder {elsewhere / 'Sentences'} does not exist"):
    flickr30k.score_files(elsewhere / "test.txt", results)
  (tree / "test.txt").write_text("100\n200\n300\n")
  with pytest.raises(ScoreError, match="Annotations/300.xml does not exist"):
    flickr30k.score_files(tree / "test.txt", results)
  (tree / "Annotations" / "300.xml").write_text((tree / "Annotations" / "200.xml").read_text())
  with pytest.raises(ScoreError, match="sentence file .*Sentences/300.txt does not exist"):
    flickr30k.score_files(tree / "test.txt", results)
  (elsewhere / "bad.json").write_text(json.dumps(dict(images=[dict(id=0)])))
  with pytest.raises(ScoreError, match=r"bad.json: images\[0\] has original_img_id None"):
    flickr30k.score_files(elsewhere / "bad.json", results, flickr_entities=tree)
