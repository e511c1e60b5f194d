"""The LVIS protocol's scorer (glipjax/evaluators/lvis.py): federated evaluation on hand-computed cases, the
frequency groups, the per-image cap against fixed AP's per-category cap, agreement with a direct call of the lvis
package, and the errors a bad file raises.

Hand-computed APs: a detection on its ground-truth box matches at every IoU threshold, so AP is the 101-point
interpolated precision averaged over the categories with ground truth. One true positive ranked below one false
positive: precision 1/2 at every recall -> 0.5."""
import copy
import json
import logging

import numpy as np
import pytest

from glipjax.evaluators import lvis
from glipjax.evaluators.files import ScoreError

BOX_A, BOX_B, ELSEWHERE = [10, 10, 50, 50], [100, 60, 40, 30], [300, 200, 20, 20]


def _image(i, neg=(), not_exhaustive=()):
  return dict(id=i, width=640, height=480, neg_category_ids=list(neg),
              not_exhaustive_category_ids=list(not_exhaustive))


def _gt(images, annotations, frequencies=("f", "c", "r")):
  """Categories 1.. with `frequencies`; annotations (image_id, category_id, bbox)."""
  categories = [dict(id=i, name=f"c{i}", frequency=str(f)) for i, f in enumerate(frequencies, 1)]
  return dict(images=images, categories=categories,
              annotations=[dict(id=n, image_id=i, category_id=c, bbox=list(b), area=float(b[2] * b[3]))
                           for n, (i, c, b) in enumerate(annotations, 1)])


def _det(image_id, category_id, bbox, score):
  return dict(image_id=image_id, category_id=category_id, bbox=list(bbox), score=score)


def test_federated_negative_and_unknown_categories():
  """A detection counts only where the image's annotations or neg_category_ids name its category."""
  hit = [_det(1, 1, BOX_A, 0.9)]
  unverified = _gt([_image(1), _image(2)], [(1, 1, BOX_A)])
  negative = _gt([_image(1), _image(2, neg=[1])], [(1, 1, BOX_A)])
  assert lvis.score(unverified, hit)["AP"] == pytest.approx(1.0)
  # Image 2 says nothing of category 1: its detection there, though scored first, is ignored.
  assert lvis.score(unverified, hit + [_det(2, 1, BOX_A, 0.95)])["AP"] == pytest.approx(1.0)
  # Image 2 lists category 1 as absent: the same detection is a false positive ranked first -> 0.5.
  metrics = lvis.score(negative, hit + [_det(2, 1, BOX_A, 0.95)])
  assert metrics["AP"] == pytest.approx(0.5) and metrics["AP50"] == pytest.approx(0.5)
  assert metrics["APf"] == pytest.approx(0.5) and metrics["APm"] == pytest.approx(0.5)
  # Ranked below the hit, it costs nothing (recall 1 is reached at precision 1).
  assert lvis.score(negative, hit + [_det(2, 1, BOX_A, 0.5)])["AP"] == pytest.approx(1.0)


def test_false_positive_of_a_not_exhaustive_category_is_not_penalised():
  dets = [_det(1, 1, BOX_A, 0.9), _det(2, 1, BOX_B, 0.8), _det(2, 1, ELSEWHERE, 0.95)]
  exhaustive = _gt([_image(1), _image(2)], [(1, 1, BOX_A), (2, 1, BOX_B)])
  # FP, TP, TP over 2 objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> 2/3 at every recall threshold.
  assert lvis.score(exhaustive, dets)["AP"] == pytest.approx(2 / 3)
  not_exhaustive = _gt([_image(1), _image(2, not_exhaustive=[1])], [(1, 1, BOX_A), (2, 1, BOX_B)])
  assert lvis.score(not_exhaustive, dets)["AP"] == pytest.approx(1.0)
  # Its objects still count: without the hit on BOX_B recall stops at 1/2 -> 51 of the 101 recall points.
  assert lvis.score(not_exhaustive, dets[:1] + dets[2:])["AP"] == pytest.approx(51 / 101)


def test_frequency_groups_average_their_own_categories():
  """Category 1 (frequent) found, 2 (common) found below a false positive, 3 (rare) missed."""
  gt = _gt([_image(1)], [(1, 1, BOX_A), (1, 2, BOX_B), (1, 3, ELSEWHERE)], frequencies=("f", "c", "r"))
  dets = [_det(1, 1, BOX_A, 0.9), _det(1, 2, BOX_B, 0.7), _det(1, 2, BOX_A, 0.8)]
  m = lvis.score(gt, dets)
  assert (m["APf"], m["APc"], m["APr"]) == pytest.approx((1.0, 0.5, 0.0))
  assert m["AP"] == pytest.approx(0.5)
  # A group without ground truth: the package's -1 reported as 0.
  m = lvis.score(_gt([_image(1)], [(1, 1, BOX_A)], frequencies=("f", "c", "r")), dets[:1])
  assert m == pytest.approx(dict(AP=1.0, AP50=1.0, AP75=1.0, APs=0.0, APm=1.0, APl=0.0, APr=0.0, APc=0.0, APf=1.0))


def test_per_image_cap_against_fixed_ap():
  """Two confident detections of a category image 1 says nothing of take the per-image cap's slots."""
  gt = _gt([_image(1)], [(1, 1, BOX_A)])
  dets = [_det(1, 2, BOX_B, 0.99), _det(1, 2, ELSEWHERE, 0.98), _det(1, 1, BOX_A, 0.5)]
  assert lvis.score(gt, dets, max_dets=2)["AP"] == 0.0
  assert lvis.score(gt, dets, max_dets=3)["AP"] == pytest.approx(1.0)
  assert lvis.score(gt, dets, max_dets=2, fixed_ap=True)["AP"] == pytest.approx(1.0)
  # 350 detections in one image: the default cap of 300 drops the hit, fixed AP keeps it.
  many = [_det(1, 2, [i, i, 10, 10], 0.9) for i in range(349)] + [_det(1, 1, BOX_A, 0.5)]
  assert lvis.score(gt, many)["AP"] == 0.0
  assert lvis.score(gt, many, fixed_ap=True)["AP"] == pytest.approx(1.0)


def test_fixed_ap_keeps_the_best_detections_of_each_category_over_the_split():
  gt = _gt([_image(1), _image(2)], [(1, 1, BOX_A), (2, 1, BOX_B)])
  dets = [_det(2, 1, BOX_B, 0.7), _det(1, 1, ELSEWHERE, 0.8), _det(1, 1, BOX_A, 0.9)]
  # k=1 keeps the hit at 0.9: recall 1/2 at precision 1, nothing past it -> 51 of the 101 recall points.
  assert lvis.score(gt, dets, fixed_ap=True, max_dets_per_category=1)["AP"] == pytest.approx(51 / 101)
  assert lvis.score(gt, dets, fixed_ap=True, max_dets_per_category=2)["AP"] == pytest.approx(51 / 101)
  # k=3: TP, FP, TP: precision 1 up to recall 1/2, then 2/3.
  full = (51 + 50 * 2 / 3) / 101
  assert lvis.score(gt, dets, fixed_ap=True, max_dets_per_category=3)["AP"] == pytest.approx(full)
  assert lvis.score(gt, dets, fixed_ap=True)["AP"] == pytest.approx(full)
  assert lvis.top_per_category(dets + [_det(1, 2, BOX_A, 0.1)], 2) == [dets[2], dets[1], _det(1, 2, BOX_A, 0.1)]
  with pytest.raises(ValueError, match="max_dets_per_category"):
    lvis.score(gt, dets, fixed_ap=True, max_dets_per_category=0)


def _random_lvis(rng, num_images=40, num_categories=30):
  """A small LVIS-like split: boxes of every size, a few categories per image, negative and not-exhaustive
  lists, and detections (jittered objects, duplicates, false positives) of present, absent and unverified
  categories."""
  frequencies = rng.choice(list("rcf"), num_categories)
  images, annotations, results = [], [], []
  for i in range(1, num_images + 1):
    present = rng.choice(num_categories, rng.integers(1, 5), replace=False) + 1
    others = [c for c in range(1, num_categories + 1) if c not in present]
    neg = rng.choice(others, 3, replace=False)
    not_exhaustive = [int(present[0])] if rng.random() < 0.3 else []
    images.append(_image(i, neg=[int(c) for c in neg], not_exhaustive=not_exhaustive))
    for c in present:
      for _ in range(rng.integers(1, 4)):
        w, h = rng.uniform(4, 200, 2)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        annotations.append((i, int(c), [float(x), float(y), float(w), float(h)]))
        for _ in range(rng.integers(0, 3)):
          jx, jy, jw, jh = rng.normal(0, 0.1, 4) * [w, h, w, h]
          results.append(_det(i, int(c), [x + jx, y + jy, max(w + jw, 1), max(h + jh, 1)], float(rng.random())))
    for _ in range(rng.integers(5, 30)):
      w, h = rng.uniform(4, 200, 2)
      results.append(_det(i, int(rng.integers(1, num_categories + 1)), [float(rng.uniform(0, 440)),
                          float(rng.uniform(0, 280)), float(w), float(h)], float(rng.random())))
  return _gt(images, annotations, frequencies), results


def _package_metrics(tmp_path, gt, results, max_dets):
  """The lvis package used directly, its ground truth read from a file (numpy's `float` alias, which its
  accumulate() needs, comes with glipjax's loader)."""
  api = lvis._api()
  import lvis as package
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  lvis_gt = package.LVIS(str(path))
  ev = package.LVISEval(lvis_gt, package.LVISResults(lvis_gt, copy.deepcopy(results), max_dets=max_dets), "bbox")
  ev.run()
  assert api.LVISEval is package.LVISEval
  return {k: max(float(ev.results[k]), 0.0) for k in lvis.METRIC_NAMES}


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_score_equals_the_lvis_package(tmp_path):
  gt, results = _random_lvis(np.random.default_rng(0))
  gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
  for max_dets in (300, 12):
    ours = lvis.score(gt, results, max_dets=max_dets)
    assert ours == pytest.approx(_package_metrics(tmp_path, gt, results, max_dets), abs=1e-12)
    assert 0.05 < ours["AP"] < 0.95 and len({ours["APr"], ours["APc"], ours["APf"]}) == 3
  # Fixed AP: evaluate_ap_fixed.py's top 5 per category (by a stable argsort here), then no per-image cap.
  by_category = {}
  for r in results:
    by_category.setdefault(r["category_id"], []).append(r)
  top = [rs[i] for rs in by_category.values() for i in np.argsort([-r["score"] for r in rs], kind="stable")[:5]]
  assert lvis.score(gt, results, fixed_ap=True, max_dets_per_category=5) == pytest.approx(
      _package_metrics(tmp_path, gt, top, -1), abs=1e-12)
  assert lvis.score(gt, results, fixed_ap=True) != lvis.score(gt, results, fixed_ap=True, max_dets_per_category=5)
  assert gt == gt_before and results == results_before  # neither input is modified


def test_quiet_and_leaves_logging_alone(capsys):
  root = logging.getLogger()
  handlers, level = root.handlers[:], root.level
  lvis.score(_gt([_image(1)], [(1, 1, BOX_A)]), [_det(1, 1, BOX_A, 0.9)])
  out = capsys.readouterr()
  assert out.out == "" and out.err == ""
  assert root.handlers == handlers and root.level == level


def test_empty_results_and_empty_ground_truth_score_zero(tmp_path):
  gt = _gt([_image(1)], [(1, 1, BOX_A)])
  assert lvis.score(gt, []) == {k: 0.0 for k in lvis.METRIC_NAMES}
  assert lvis.score(gt, [], fixed_ap=True) == {k: 0.0 for k in lvis.METRIC_NAMES}
  assert lvis.score(_gt([_image(1)], []), [_det(1, 1, BOX_A, 0.9)])["AP"] == 0.0
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "res.json").write_text("[]")
  assert lvis.score_files(tmp_path / "gt.json", tmp_path / "res.json") == {k: 0.0 for k in lvis.METRIC_NAMES}


def test_score_files_fills_area_and_ids(tmp_path):
  gt = _gt([_image(1), _image(2)], [(1, 1, BOX_A), (2, 1, BOX_B)])
  for a in gt["annotations"]:
    del a["area"], a["id"]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "res.json").write_text(json.dumps([_det(1, 1, BOX_A, 0.9), _det(2, 1, ELSEWHERE, 0.95)]))
  for fixed_ap in (False, True):
    m = lvis.score_files(str(tmp_path / "gt.json"), str(tmp_path / "res.json"), fixed_ap=fixed_ap)
    assert m["AP"] == pytest.approx(51 / 101 / 2)  # one object of two found, below a false positive
  checked = lvis.check_ground_truth(copy.deepcopy(gt), "gt.json")
  assert [(a["id"], a["area"]) for a in checked["annotations"]] == [(1, 2500.0), (2, 1200.0)]


def _write(tmp_path, gt, results):
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "res.json").write_text(results if isinstance(results, str) else json.dumps(results))
  return tmp_path / "gt.json", tmp_path / "res.json"


@pytest.mark.parametrize("edit, message", [
    (lambda g: [c.pop("frequency") for c in g["categories"]], r"gt.json: categories\[0\] \(id 1\) has no "
     "frequency.*not an LVIS v1 annotation file"),
    (lambda g: g["categories"][1].update(frequency="x"), r"categories\[1\] \(id 2\) has frequency 'x'"),
    (lambda g: g["images"][1].pop("neg_category_ids"), r"gt.json: images\[1\] \(id 2\) has no neg_category_ids"),
    (lambda g: g["images"][0].pop("not_exhaustive_category_ids"), "has no not_exhaustive_category_ids list"),
    (lambda g: g.pop("categories"), "has images, annotations and categories"),
    (lambda g: g["annotations"][1].update(bbox=[1, 2, 3]), r"annotations\[1\] has bbox \[1, 2, 3\]"),
    (lambda g: g["annotations"][1].update(image_id=9), r"annotations\[1\] names image_id 9"),
    (lambda g: g["annotations"][0].update(category_id=9), r"annotations\[0\] names category_id 9"),
    (lambda g: g["annotations"][1].update(id=1), r"annotations\[1\] has id 1; ids are distinct"),
])
def test_bad_annotation_files(tmp_path, edit, message):
  gt = _gt([_image(1), _image(2)], [(1, 1, BOX_A), (2, 2, BOX_B)])
  edit(gt)
  with pytest.raises(ScoreError, match=message):
    lvis.score_files(*_write(tmp_path, gt, [_det(1, 1, BOX_A, 0.9)]))


@pytest.mark.parametrize("results, message", [
    ({"not": "a list"}, "res.json: an LVIS results file is a JSON list"),
    ([_det(1, 1, BOX_A, 0.9), dict(image_id=1, bbox=BOX_A, score=1)], "res.json: record 1 needs image_id, "
     "category_id, bbox and score"),
    ([_det(7, 1, BOX_A, 0.9)], "record 0 names image_id 7, which the annotation file lacks"),
    ([_det(1, 1204, BOX_A, 0.9)], "record 0 names category_id 1204"),
    ([_det(1, 1, [1, 2, 3], 0.9)], r"record 0 has bbox \[1, 2, 3\]"),
    ([_det(1, 1, [1, 2, -3, 4], 0.9)], r"record 0 has bbox \[1, 2, -3, 4\]"),
    ([_det(1, 1, BOX_A, "high")], "record 0 has score 'high'"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]', "record 0 has score nan"),
    ("[{", "res.json: malformed JSON"),
])
def test_bad_results_files(tmp_path, results, message):
  with pytest.raises(ScoreError, match=message):
    lvis.score_files(*_write(tmp_path, _gt([_image(1)], [(1, 1, BOX_A)]), results))


def test_missing_file(tmp_path):
  with pytest.raises(ScoreError, match="annotation file .*gt.json does not exist"):
    lvis.score_files(tmp_path / "gt.json", tmp_path / "res.json")
