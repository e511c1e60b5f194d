"""`glipjax.score --protocol coco`: a results file against the annotation file it was made for."""
import json
import subprocess
import sys

import pytest

from glipjax import score


@pytest.fixture
def files(tmp_path):
  gt = dict(images=[dict(id=10, width=100, height=80), dict(id=11, width=100, height=80), dict(id=12, width=50,
                                                                                             height=50)],
            categories=[dict(id=3, name="dog"), dict(id=7, name="cat")],
            annotations=[dict(id=1, image_id=10, category_id=3, bbox=[10, 10, 30, 20], area=600, iscrowd=0),
                         dict(id=2, image_id=11, category_id=7, bbox=[50, 20, 40, 40], area=1600, iscrowd=0),
                         dict(id=3, image_id=11, category_id=3, bbox=[0, 0, 60, 60], area=3600, iscrowd=1)])
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  return tmp_path


def _run(files, results, *extra):
  (files / "res.json").write_text(json.dumps(results))
  return score.main(["--protocol", "coco", "--annotations", str(files / "gt.json"), "--results",
                     str(files / "res.json"), *extra])


def test_perfect_and_partial_detections(files, capsys):
  exact = [dict(image_id=10, category_id=3, bbox=[10, 10, 30, 20], score=0.9),
           dict(image_id=11, category_id=7, bbox=[50, 20, 40, 40], score=0.8)]
  assert _run(files, exact, "--out", str(files / "m.json")) == 0
  metrics = json.loads(capsys.readouterr().out)
  assert metrics == json.loads((files / "m.json").read_text())
  assert metrics["AP"] == pytest.approx(1.0) and set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
  # A detection inside the crowd region is ignored; one elsewhere, scored first, is a false positive: dog AP
  # drops to 0.5 (its one hit ranked second), cat stays 1, so the mean over the two categories is 0.75.
  assert _run(files, exact + [dict(image_id=11, category_id=3, bbox=[5, 5, 40, 40], score=0.95)]) == 0
  assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(1.0)
  assert _run(files, exact + [dict(image_id=12, category_id=3, bbox=[5, 5, 20, 20], score=0.95)]) == 0
  assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(0.75, abs=0.01)
  assert _run(files, []) == 0 and json.loads(capsys.readouterr().out)["AP"] == 0.0


def test_unscorable_files_are_one_line_errors(files):
  cmd = [sys.executable, "-m", "glipjax.score", "--protocol", "coco", "--annotations", str(files / "gt.json"),
         "--results", str(files / "res.json")]
  for results, message in (([dict(image_id=99, category_id=3, bbox=[0, 0, 1, 1], score=1.0)], "image_id 99"),
                           ([dict(image_id=10, category_id=3, bbox=[0, 0, 1], score=1.0)], "record 0 has bbox"),
                           ({"not": "a list"}, "JSON list")):
    (files / "res.json").write_text(json.dumps(results))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
  (files / "res.json").write_text("[{")
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "malformed JSON" in out.stderr


def test_a_custom_annotation_file_without_area_or_crowd_flags_is_scored(files, capsys):
  gt = json.loads((files / "gt.json").read_text())
  for a in gt["annotations"]:
    del a["area"], a["id"]
  gt["annotations"] = [dict(a, iscrowd=0) if a["iscrowd"] == 0 else a for a in gt["annotations"]]
  del gt["annotations"][0]["iscrowd"]
  (files / "gt.json").write_text(json.dumps(gt))
  exact = [dict(image_id=10, category_id=3, bbox=[10, 10, 30, 20], score=0.9),
           dict(image_id=11, category_id=7, bbox=[50, 20, 40, 40], score=0.8)]
  assert _run(files, exact) == 0 and json.loads(capsys.readouterr().out)["AP"] == pytest.approx(1.0)
  gt["annotations"][1]["image_id"] = 55
  (files / "gt.json").write_text(json.dumps(gt))
  with pytest.raises(Exception, match=r"annotations\[1\] names image_id 55"):
    from glipjax.evaluators import coco
    coco.score_files(files / "gt.json", files / "res.json")
