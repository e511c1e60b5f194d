"""Prepare every dataset of an ODinW suite (configs/odinw.py) from GLIP's ODinW download in one command.

  python -m glipjax.tools.prepare_odinw --root DATASET/odinw --data_dir runs/tfds --suite odinw13

`--root` is the folder GLIP's odinw/download.py unzips into (its parent, holding `odinw/`, works too). Each
dataset is prepared as `glipjax.data.prepare --format coco` would, under its suite name (e.g. odinw_pothole), with
GLIP's category names; `--split validation` is the split GLIP evaluates zero-shot. A dataset whose files are
absent is reported as `missing: <name> (<path>)` and the rest are still prepared; the exit status is 1 when any
was missing (unless --skip_missing) or failed, 2 on a usage mistake. Already prepared datasets are kept unless
--overwrite.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import pathlib
import sys
import tempfile

from glipjax.data import sources


def _root(root: pathlib.Path, datasets) -> pathlib.Path:
  """`root`, or `root/odinw` when given the parent of GLIP's layout (paths there start with odinw/)."""
  tops = {pathlib.PurePosixPath(d.validation.images).parts[0] for d in datasets}
  if not any((root / t).exists() for t in tops) and (root / "odinw").is_dir():
    return root / "odinw"
  return root


def _missing(root: pathlib.Path, files) -> pathlib.Path | None:
  annotations, images = root / files.annotations, root / files.images
  if not images.is_dir():
    return images
  if not annotations.is_file():
    return annotations
  return None


def prepare_suite(datasets, root: str | pathlib.Path, data_dir: str, split: str = "validation", *,
                  overwrite: bool = False, out=None) -> dict:
  """Prepares each of `datasets`, a line each on `out` (stdout); returns counts and, per outcome, the names."""
  from glipjax.data import prepare as prepare_lib
  out = out if out is not None else sys.stdout
  root = _root(pathlib.Path(root).expanduser(), datasets)
  result = dict(prepared=[], existing=[], missing=[], failed=[], images=0, boxes=0)
  with tempfile.TemporaryDirectory(prefix="odinw_label_maps_") as tmp:
    for ds in datasets:
      files = ds.files(split)
      absent = _missing(root, files)
      if absent is not None:
        print(f"missing: {ds.name} ({absent})", file=out)
        result["missing"].append(ds.name)
        continue
      target = sources.split_dir(data_dir, ds.name, split) / sources.VERSION
      if target.exists() and not overwrite:
        print(f"exists: {ds.name} ({target}; --overwrite prepares it again)", file=out)
        result["existing"].append(ds.name)
        continue
      label_map = None
      if ds.label_map:
        label_map = pathlib.Path(tmp) / f"{ds.name}.json"
        label_map.write_text(json.dumps({str(k): v for k, v in ds.label_map.items()}))
      try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS's "Downloading and preparing ..." chatter
          stats = prepare_lib.prepare("coco", str(root / files.annotations), str(root / files.images), ds.name,
                                      data_dir, split=split, label_map=str(label_map) if label_map else None,
                                      overwrite=overwrite)
      except sources.PrepareError as e:
        print(f"failed: {ds.name}: {e}", file=out)
        result["failed"].append(ds.name)
        continue
      result["prepared"].append(ds.name)
      result["images"] += stats.get("images", 0)
      result["boxes"] += stats.get("boxes", 0)
      print(f"{ds.name}: {stats.get('images', 0)} images, {stats.get('boxes', 0)} boxes, "
            f"{stats['categories']} categories{_notes(ds, data_dir, split, stats)}", file=out)
  return result


def _notes(ds, data_dir: str, split: str, stats: dict) -> str:
  """What deserves a look: records repaired or skipped, and categories other than GLIP's 1..N (its override
  replaces the file's list; a leftover background category 0 that the coco reader kept would be one more)."""
  notes = [f"{reason}: {n}" for reason, n in stats.get("counts", {}).items()]
  if ds.label_map:
    ids = {c.id for c in sources.open_dataset(data_dir, ds.name, split).categories}
    glip = set(range(1, max(ds.label_map) + 1))
    extra, absent = sorted(ids - glip), sorted(set(ds.label_map) - ids)
    if extra:
      notes.append(f"WARNING categories not in GLIP's list: {extra}")
    if absent:
      notes.append(f"WARNING GLIP's categories absent from the file: {absent}")
  return f"  ({'; '.join(notes)})" if notes else ""


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", required=True, help="the ODinW folder (DATASET/odinw of GLIP's download)")
  p.add_argument("--data_dir", required=True, help="where prepared datasets live (config.data.data_dir)")
  p.add_argument("--suite", default="odinw35", help="odinw13 or odinw35 (configs/odinw.py)")
  p.add_argument("--split", default="validation", choices=sources.SPLITS,
                 help="validation: the split GLIP evaluates (valid/ or mini_val/); test; train (fine-tuning)")
  p.add_argument("--only", default="", help="comma-separated dataset names of the suite to prepare")
  p.add_argument("--overwrite", action="store_true", help="prepare already prepared datasets again")
  p.add_argument("--skip_missing", action="store_true", help="exit 0 although some datasets' files are absent")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)
  from configs import odinw
  try:
    datasets = odinw.suite(args.suite)
    if args.only:
      wanted = [n.strip() for n in args.only.split(",") if n.strip()]
      unknown = [n for n in wanted if n not in {d.name for d in datasets}]
      if unknown:
        raise ValueError(f"--only: {', '.join(unknown)} not in {args.suite} ({', '.join(d.name for d in datasets)})")
      datasets = tuple(d for d in datasets if d.name in wanted)
    root = pathlib.Path(args.root).expanduser()
    if not root.is_dir():
      raise ValueError(f"--root {root} is not a folder (the ODinW download: DATASET/odinw)")
  except ValueError as e:  # UnknownSuite is one too
    print(f"error: {e}", file=sys.stderr)
    return 2
  result = prepare_suite(datasets, root, args.data_dir, args.split, overwrite=args.overwrite)
  print(f"{args.suite} {args.split}: {len(result['prepared'])} prepared ({result['images']} images, "
        f"{result['boxes']} boxes), {len(result['existing'])} already prepared, {len(result['missing'])} missing, "
        f"{len(result['failed'])} failed, of {len(datasets)} datasets")
  if result["failed"] or (result["missing"] and not args.skip_missing):
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
