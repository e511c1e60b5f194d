"""RefCOCO accuracy@0.5 (`glipjax.score --protocol refcoco`) on hand-computed cases."""
import json

import numpy as np
import pytest

from glipjax import score
from glipjax.evaluators import refcoco
from glipjax.evaluators.files import ScoreError


@pytest.fixture
def gt_file(tmp_path):
  gt = dict(images=[dict(id=i, file_name="COCO_train2014_000000000009.jpg", caption=c, original_id=9)
                    for i, c in ((1, "the left dog"), (2, "man in red"), (3, "bowl"))],
            annotations=[dict(id=10, image_id=1, bbox=[0, 0, 10, 10], category_id=18),
                         dict(id=11, image_id=2, bbox=[20, 20, 20, 10], category_id=1),
                         dict(id=12, image_id=3, bbox=[5, 5, 4, 4], category_id=51)])
  path = tmp_path / "final_refcoco_testA.json"
  path.write_text(json.dumps(gt))
  return path


def test_top_box_accuracy_at_half_iou(gt_file, tmp_path, capsys):
  results = [
      # IoU of [0, 0, 10, 5] with [0, 0, 10, 10] is exactly 0.5: a hit; the better-scored box decides.
      dict(image_id=1, boxes=[[50, 50, 60, 60], [0, 0, 10, 5]], scores=[0.2, 0.9]),
      # The top box misses (IoU 80/200 = 0.4), the second hits: counted at @5, not at @1.
      dict(image_id=2, boxes=[[20, 20, 28, 30], [21, 20, 40, 30]], scores=[0.8, 0.7]),
      # No boxes: a miss everywhere.
      dict(image_id=3, boxes=[], scores=[]),
  ]
  path = tmp_path / "res.json"
  path.write_text(json.dumps(results))
  assert score.main(["--protocol", "refcoco", "--annotations", str(gt_file), "--results", str(path)]) == 0
  metrics = json.loads(capsys.readouterr().out)
  assert metrics == pytest.approx({"acc@0.5": 1 / 3, "acc@0.5@5": 2 / 3, "acc@0.5@10": 2 / 3})
  np.testing.assert_allclose(refcoco.iou(np.array([[0., 0, 10, 4.9]]), np.array([0., 0, 10, 10])), [0.49])
  # An expression absent from the results is a miss, not skipped.
  assert refcoco.score_files(gt_file, path)["acc@0.5"] == pytest.approx(1 / 3)
  path.write_text(json.dumps(results[:1]))
  assert refcoco.score_files(gt_file, path)["acc@0.5"] == pytest.approx(1 / 3)


def test_bad_files_name_the_record(gt_file, tmp_path):
  path = tmp_path / "res.json"
  for results, message in (([dict(image_id=7, boxes=[])], "image_id 7"),
                           ([dict(image_id=1, boxes=[[0, 0, 1, 1]], scores=[1, 2])], "1 boxes but 2 scores"),
                           ([dict(image_id=1, boxes=[]), dict(image_id=1, boxes=[])], "record 1 repeats"),
                           ({"image_id": 1}, "JSON list")):
    path.write_text(json.dumps(results))
    with pytest.raises(ScoreError, match=message):
      refcoco.score_files(gt_file, path)
  gt = json.loads(gt_file.read_text())
  gt["annotations"].append(dict(id=13, image_id=1, bbox=[0, 0, 1, 1]))
  gt_file.write_text(json.dumps(gt))
  with pytest.raises(ScoreError, match="image entry 1 has several annotations"):
    refcoco.score_files(gt_file, path)
