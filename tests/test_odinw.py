"""ODinW suites as data (configs/odinw.py) and preparing a suite in one command (glipjax/tools/prepare_odinw.py)."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs import odinw
from glipjax.data import sources
from glipjax.tools import prepare_odinw


def test_suites_are_glips_lists():
  s13, s35 = odinw.suite("odinw13"), odinw.suite("odinw35")
  assert len(s13) == 13 and len(s35) == 35
  names = [d.name for d in s35]
  assert len(set(names)) == 35
  assert all(odinw.NAME_PATTERN.fullmatch(n) for n in names), names
  assert {d.name for d in s13} <= set(names)
  assert all(d in s35 for d in s13)  # the same entries: a prepared name means one thing
  assert len({d.glip_config for d in s35}) == 35
  for d in s35:
    for split in ("validation", "train", "test"):
      files = d.files(split)
      for p in (files.annotations, files.images):
        assert p and not pathlib.PurePosixPath(p).is_absolute() and ".." not in p.split("/"), (d.name, p)
        assert not p.startswith("odinw/") and not p.endswith("/"), (d.name, p)
      assert files.annotations.endswith(".json") and files.annotations.startswith(files.images + "/")
    assert d.annotations == d.validation.annotations and d.images == d.validation.images
    assert d.validation != d.train
    if d.label_map is not None:  # a --label_map file as glipjax.data.prepare reads it
      assert json.loads(json.dumps(d.label_map)) == {str(k): v for k, v in d.label_map.items()}
      assert all(isinstance(k, int) and k >= 1 and v.strip() for k, v in d.label_map.items()), d.name
    if d.caption_prompt is not None:
      assert len(d.caption_prompt) == len(d.label_map) and all(len(p) == 3 for p in d.caption_prompt)
  by_name = {d.name: d for d in s35}
  assert by_name["odinw_egohands_generic"].validation.images == "EgoHands/generic/mini_val"
  assert by_name["odinw_pistols"].validation == odinw.Files("pistols/export/val_annotations_without_background.json",
                                                            "pistols/export")
  assert by_name["odinw_aquarium"].label_map[3] == "penguin"
  with pytest.raises(KeyError, match="known suites: odinw13, odinw35"):
    odinw.suite("odinw14")


def _jpegs(folder: pathlib.Path, names, hw=(32, 40)):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for n in names:
    Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(folder / n)


def _coco(path: pathlib.Path, files, categories, boxes_per_image):
  """A COCO json: image i has boxes_per_image[i] boxes, labelled in turn with the categories other than 0."""
  images = [dict(id=i, file_name=f, height=32, width=40) for i, f in enumerate(files)]
  labels = [c["id"] for c in categories if c["id"] != 0]
  anns = [dict(id=10 * i + k, image_id=i, category_id=labels[k % len(labels)], bbox=[2 + 6 * k, 3, 10, 12],
               area=120, iscrowd=0) for i, n in enumerate(boxes_per_image) for k in range(n)]
  path.write_text(json.dumps(dict(images=images, annotations=anns, categories=categories)))


@pytest.fixture
def fake_odinw(tmp_path, monkeypatch):
  """GLIP's layout for two datasets (a per-split folder one, an export/ one) and a third whose files are absent."""
  root = tmp_path / "DATASET" / "odinw"
  by_name = {d.name: d for d in odinw.suite("odinw35")}
  aquarium, pistols, pothole = by_name["odinw_aquarium"], by_name["odinw_pistols"], by_name["odinw_pothole"]
  # Aquarium: the file's own names differ from GLIP's override, which must win.
  val = aquarium.validation
  _jpegs(root / val.images, ["a.jpg", "b.jpg", "c.jpg"])
  _coco(root / val.annotations, ["a.jpg", "b.jpg", "c.jpg"],
        [dict(id=i, name=f"class{i}", supercategory="creatures") for i in range(1, 8)], [2, 1, 0])
  # pistols: a raw Roboflow export, its dummy category 0 (the others' supercategory, no boxes) still in the file.
  val = pistols.validation
  _jpegs(root / val.images, ["p1.jpg", "p2.jpg"])
  _coco(root / val.annotations, ["p1.jpg", "p2.jpg"],
        [dict(id=0, name="pistols", supercategory="none"), dict(id=1, name="pistol", supercategory="pistols")], [1, 3])
  monkeypatch.setattr(odinw, "SUITES", dict(odinw.SUITES, odinw35=(aquarium, pothole, pistols)))
  return root


def test_prepare_odinw(fake_odinw, tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  assert prepare_odinw.main(["--root", str(fake_odinw), "--data_dir", data_dir]) == 1  # one dataset is missing
  out = capsys.readouterr().out.splitlines()
  assert any(line.startswith("missing: odinw_pothole (") and "pothole/valid" in line for line in out), out
  assert any(line.startswith("odinw_aquarium: 3 images, 3 boxes, 7 categories") for line in out), out
  assert any(line.startswith("odinw_pistols: 2 images, 4 boxes, 1 categories") for line in out), out
  assert "1 missing" in out[-1] and "2 prepared" in out[-1], out[-1]

  aquarium = sources.open_dataset(data_dir, "odinw_aquarium", "validation")
  assert aquarium.category_names == ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
  assert [c.id for c in aquarium.categories] == list(range(1, 8))
  assert len(aquarium.source) == 3 and aquarium.statistics["boxes"] == 3
  pistols = sources.open_dataset(data_dir, "odinw_pistols", "validation")
  assert [(c.id, c.name) for c in pistols.categories] == [(1, "pistol")]  # not the dummy category 0
  assert len(pistols.source) == 2 and pistols.statistics["boxes"] == 4
  assert pistols.annotations.endswith("pistols/export/val_annotations_without_background.json")

  # Again, from the parent of the ODinW folder: prepared ones are kept, and --skip_missing exits 0.
  assert prepare_odinw.main(["--root", str(fake_odinw.parent), "--data_dir", data_dir, "--skip_missing"]) == 0
  out = capsys.readouterr().out
  assert "exists: odinw_aquarium" in out and "exists: odinw_pistols" in out and "missing: odinw_pothole" in out


@pytest.mark.parametrize("args, message", [
    (["--root", "{tmp}/nowhere"], "is not a folder"),
    (["--root", "{tmp}", "--suite", "odinw14"], "known suites: odinw13, odinw35"),
    (["--root", "{tmp}", "--only", "odinw_atlantis"], "not in odinw35"),
])
def test_usage_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
  argv = [a.format(tmp=tmp_path) for a in args] + ["--data_dir", str(tmp_path / "tfds")]
  assert prepare_odinw.main(argv) == 2
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], captured.err
  assert "Traceback" not in captured.err
