"""Sweeps: expansion and names, override checking, run status, the local launcher (skip finished, resume
interrupted, record failures) with a stand-in trainer, the SLURM / TPU-pod scripts, and the report on fixture run
folders."""
import csv
import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

import pytest
from PIL import Image

from glipjax import reporting, sweeps
from launch import report as report_cli
from launch import sweep as sweep_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_product_zip_chain_seeds_expand_in_order():
  runs = sweeps.product(sweeps.sweep("model.dyhead.fusion", [True, False]), sweeps.sweep("model.dyhead.num_layers",
                                                                                          [1, 2, 3]))
  assert len(runs) == 6
  assert runs[0] == {"model.dyhead.fusion": True, "model.dyhead.num_layers": 1}
  assert runs[3] == {"model.dyhead.fusion": False, "model.dyhead.num_layers": 1}  # the first axis varies slowest
  zipped = sweeps.zipped(sweeps.sweep("a.x", [1, 2]), sweeps.sweep("a.y", [3, 4]))
  assert zipped == [{"a.x": 1, "a.y": 3}, {"a.x": 2, "a.y": 4}]
  with pytest.raises(ValueError, match="differ in length"):
    sweeps.zipped(sweeps.sweep("a.x", [1, 2]), sweeps.sweep("a.y", [3]))
  with pytest.raises(ValueError, match="set twice"):
    sweeps.product(sweeps.sweep("a.x", [1]), sweeps.sweep("a.x", [2]))
  one_at_a_time = sweeps.product(sweeps.chain([{}], sweeps.sweep("a.x", [5])), sweeps.seeds(3))
  assert one_at_a_time == [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"a.x": 5, "seed": 0}, {"a.x": 5, "seed": 1},
                           {"a.x": 5, "seed": 2}]


def test_run_names_come_from_the_overrides_with_the_seed_last():
  assert sweeps.run_name({"seed": 1, "model.dyhead.num_layers": 2}) == "num_layers=2.seed=1"
  assert sweeps.run_name({"seed": 0}) == "base.seed=0"
  assert sweeps.run_name({}) == "base"
  assert sweeps.run_name({"model.dyhead.layer_scale_init": 1 / 3}) == "layer_scale_init=0.333333"
  assert sweeps.run_name({"data.canvas": (96, 128)}) == "canvas=96x128"
  # Colliding last components keep their full keys.
  assert sweeps.run_name({"a.lr": 1, "b.lr": 2}) == "a.lr=1.b.lr=2"
  assert sweeps.setting_name({"model.head.alignment": "contrastive", "seed": 2}) == "alignment=contrastive"


def test_flag_values_are_what_config_flags_parse():
  assert sweeps.flag_value(True) == "true"
  assert sweeps.flag_value((1, 4, 2)) == "(1,4,2)"
  assert sweeps.flag_value(("a",)) == "('a',)"
  assert sweeps.flag_value(0.5) == "0.5"


SWEEP_FILE = """
from configs import tiny
from glipjax.sweeps import chain, product, seeds, sweep

def get_config():
  c = tiny.get_config()
  c.train.num_steps = 10
  return c

def get_sweep():
  return product(chain([{}], sweep("model.dyhead.num_layers", [3])), seeds(2))
"""


def write_sweep(tmp_path, text=SWEEP_FILE):
  path = tmp_path / "my_sweep.py"
  path.write_text(text)
  return path


def test_load_checks_keys_types_and_duplicate_names(tmp_path):
  sweep = sweeps.load(write_sweep(tmp_path), tmp_path / "root")
  assert [r.name for r in sweep.runs] == ["base.seed=0", "base.seed=1", "num_layers=3.seed=0", "num_layers=3.seed=1"]
  assert sweep.runs[2].workdir == tmp_path / "root" / "num_layers=3.seed=0"
  assert sweep.runs[2].train_args(str(tmp_path / "my_sweep.py"))[-2:] == ["--config.model.dyhead.num_layers=3",
                                                                          "--config.seed=0"]
  for bad, message in [('sweep("model.dyhead.num_layerz", [3])', "unknown config key"),
                       ('sweep("model.dyhead.num_layers", ["three"])', "is a str"),
                       ('sweep("model.dyhead.fusion", [1])', "is a int"),
                       ('sweep("model.dyhead.num_layers", [3, 3])', "both named")]:
    path = write_sweep(tmp_path, SWEEP_FILE.replace('sweep("model.dyhead.num_layers", [3])', bad))
    with pytest.raises(ValueError, match=message):
      sweeps.load(path, tmp_path / "root")


def test_run_status_finished_preempted_failed_interrupted_pending(tmp_path):
  run = sweeps.Run("r", "r", {}, tmp_path / "r")
  assert run.status() == "pending"
  run.workdir.mkdir()
  assert run.status() == "interrupted"
  (run.workdir / sweeps.FINAL_METRICS).write_text(json.dumps({"steps": 3, "preempted": True}))
  assert run.status() == "interrupted"  # a preempted run wrote its metrics but resumes
  (run.workdir / sweeps.FINAL_METRICS).unlink()
  (run.workdir / sweeps.STATUS_FILE).write_text(json.dumps({"status": "failed"}))
  assert run.status() == "failed"
  (run.workdir / sweeps.FINAL_METRICS).write_text(json.dumps({"steps": 10, "preempted": False}))
  assert run.status() == "finished"


def test_cpu_shares_split_the_cores_disjointly():
  assert sweep_cli.cpu_shares([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
  assert sweep_cli.cpu_shares([0, 1], 4) == [[0], [1]]


FAKE_TRAINER = """#!/bin/bash
# Stands in for `python -m glipjax.train ...`: logs how it was called, fails for num_layers=3 seed 1, else writes
# final metrics (AP50 = 0.1 x seed + 0.5 x layers given) after a short metrics.jsonl.
shift 2
workdir=""; layers=2; seed=0; args=("$@")
for ((i=0; i<${#args[@]}; i++)); do
  case "${args[$i]}" in
    --workdir) workdir="${args[$((i+1))]}";;
    --config.model.dyhead.num_layers=*) layers="${args[$i]#*=}";;
    --config.seed=*) seed="${args[$i]#*=}";;
  esac
done
echo "called $*" >> "$workdir/calls.txt"
if [ "$layers" = 3 ] && [ "$seed" = 1 ]; then echo "boom" >&2; exit 3; fi
echo '{"step": 5, "loss": 2.0}' >> "$workdir/metrics.jsonl"
echo '{"step": 10, "loss": 1.0}' >> "$workdir/metrics.jsonl"
ap=$(python3 -c "print(0.1 * $seed + 0.5 * ($layers == 3))")
echo "{\\"detection\\": {\\"AP50\\": $ap}, \\"steps\\": 10, \\"wall_seconds\\": 1.0, \\"preempted\\": false}" \
  > "$workdir/final_metrics.json"
"""


def test_local_launcher_skips_finished_resumes_interrupted_and_records_failures(tmp_path, capsys):
  fake = tmp_path / "fake_python"
  fake.write_text(FAKE_TRAINER)
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  root = tmp_path / "root"
  sweep = sweeps.load(write_sweep(tmp_path), root)
  finished, interrupted = sweep.runs[0], sweep.runs[1]
  finished.workdir.mkdir(parents=True)
  (finished.workdir / sweeps.FINAL_METRICS).write_text(json.dumps({"steps": 10, "preempted": False}))
  interrupted.workdir.mkdir(parents=True)
  (interrupted.workdir / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
  sweep_cli.POLL_SECONDS = 0.05
  failed = sweep_cli.run_local(sweep, parallel=2, devices="cpu", python=str(fake))
  printed = capsys.readouterr().out
  assert failed == 1
  assert "4 runs: 1 finished (skipped), 3 to run, 2 at a time" in printed
  assert "FAILED num_layers=3.seed=1 (exit 3)" in printed
  assert "[3/4 finished, 0 running, 1 failed]" in printed
  assert not (finished.workdir / "calls.txt").exists()          # skipped
  assert (interrupted.workdir / "calls.txt").read_text().count("called") == 1  # rerun in place: it resumes
  assert [r.status() for r in sweep.runs] == ["finished", "finished", "finished", "failed"]
  assert "boom" in (sweep.runs[3].workdir / "train.log").read_text()
  # Rerunning runs only the failed one.
  assert sweep_cli.run_local(sweep, parallel=2, devices="cpu", python=str(fake)) == 1
  assert (sweep.runs[2].workdir / "calls.txt").read_text().count("called") == 1
  assert (sweep.runs[3].workdir / "calls.txt").read_text().count("called") == 2


def test_slurm_array_and_tpu_pod_scripts(tmp_path):
  sweep_path = write_sweep(tmp_path)
  root = tmp_path / "root"
  code = sweep_cli.main(["--sweep", str(sweep_path), "--root", str(root), "--target", "slurm"])
  assert code == 0
  script = (root / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-3" in script
  assert subprocess.run(["bash", "-n", str(root / "sweep.sbatch")]).returncode == 0
  assert json.loads((root / sweeps.MANIFEST).read_text())["runs"][2]["name"] == "num_layers=3.seed=0"
  # What array task 2 would exec: launch.commands slurm with that run's trainer arguments.
  env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_SUBMIT_DIR=str(REPO), GLIPJAX_PYTHON="echo")
  out = subprocess.run(["bash", str(root / "sweep.sbatch")], env=env, capture_output=True, text=True, check=True)
  argv = shlex.split(out.stdout)
  assert argv[:5] == ["-m", "launch.commands", "slurm", "--per", "gpu"]
  assert argv[5] == "--" and argv[6:8] == ["--config", str(sweep_path)]
  assert argv[argv.index("--workdir") + 1] == str(root / "num_layers=3.seed=0")
  assert "--config.model.dyhead.num_layers=3" in argv and "--config.seed=0" in argv
  # A finished run's task exits at once.
  (root / "num_layers=3.seed=0").mkdir()
  (root / "num_layers=3.seed=0" / sweeps.FINAL_METRICS).write_text("{}")
  out = subprocess.run(["bash", str(root / "sweep.sbatch")], env=env, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "finished"

  assert sweep_cli.main(["--sweep", str(sweep_path), "--root", str(root), "--target", "tpu_pod"]) == 0
  lines = [l for l in (root / "tpu_pod.sh").read_text().splitlines() if "launch.commands tpu-pod" in l]
  assert len(lines) == 4
  argv = shlex.split(lines[3].replace('"$ZONE"', "Z").replace('"$ACCELERATOR_TYPE"', "v4-8"))
  assert argv[argv.index("--name") + 1] == "glip-sweep-3"
  assert argv[argv.index("--") + 1:][-2:] == ["--config.model.dyhead.num_layers=3", "--config.seed=1"]


def test_sweep_cli_dry_run_and_bad_sweep_files(tmp_path, capsys):
  sweep_path = write_sweep(tmp_path)
  assert sweep_cli.main(["--sweep", str(sweep_path), "--root", str(tmp_path / "r"), "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert out.count("pending") == 4 and "-m glipjax.train --config" in out
  assert not (tmp_path / "r").exists()
  bad = write_sweep(tmp_path, SWEEP_FILE.replace("num_layers", "num_layerz"))
  assert sweep_cli.main(["--sweep", str(bad), "--root", str(tmp_path / "r")]) == 2
  assert "unknown config key 'model.dyhead.num_layerz'" in capsys.readouterr().err


def test_the_shipped_sweep_expands():
  sweep = sweeps.load(REPO / "configs/sweeps/fusion_ablation.py", "/tmp/unused")
  assert len(sweep.runs) == 18 and len({r.setting for r in sweep.runs}) == 6


def _fixture_root(tmp_path):
  """Two settings x 2 seeds finished, one failed run, one pending (not started)."""
  root = tmp_path / "sweep"
  runs = [("base.seed=0", "base", {"seed": 0}, 0.5, 0.3), ("base.seed=1", "base", {"seed": 1}, 0.7, 0.5),
          ("fusion=True.seed=0", "fusion=True", {"model.dyhead.fusion": True, "seed": 0}, 0.8, 0.8),
          ("fusion=True.seed=1", "fusion=True", {"model.dyhead.fusion": True, "seed": 1}, 0.9, 0.6),
          ("fusion=True.seed=2", "fusion=True", {"model.dyhead.fusion": True, "seed": 2}, None, None),
          ("fusion=True.seed=3", "fusion=True", {"model.dyhead.fusion": True, "seed": 3}, None, None)]
  root.mkdir()
  (root / sweeps.MANIFEST).write_text(json.dumps({"runs": [dict(name=n, setting=s, overrides=o)
                                                           for n, s, o, *_ in runs]}))
  for name, _, _, ap50, mid in runs[:5]:
    d = root / name
    d.mkdir()
    rows = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}]
    if ap50 is not None:
      rows += [{"step": 10, "eval/detection/AP50": mid}, {"step": 20, "eval/detection/AP50": ap50}]
      (d / "final_metrics.json").write_text(json.dumps({
          "detection": {"AP50": ap50, "text_blind": {"AP50": 0.1}}, "grounding": {"AP50": ap50 / 2},
          "skipped_examples": {"x": 1}, "steps": 20, "wall_seconds": 100.0, "preempted": False}))
    else:
      (d / sweeps.STATUS_FILE).write_text(json.dumps({"status": "failed", "returncode": 1}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{truncated")
  return root


def test_report_tables_means_stds_best_and_lists_unfinished(tmp_path):
  root = _fixture_root(tmp_path)
  out, markdown = reporting.write_report(root, tmp_path / "out")
  assert "| base | (base) | 2/2 | 0.600 ± 0.141 | 0.100 ± 0.000 | 0.300 ± 0.071 |" in markdown
  # fusion: final 0.8, 0.9; best detection/AP50 over the evaluations: 0.8 and 0.9 (the mid eval of seed 1 is lower)
  assert "| fusion=True | model.dyhead.fusion=True | 2/4 | 0.850 ± 0.071 |" in markdown
  assert "- fusion=True.seed=2: failed" in markdown and "- fusion=True.seed=3: pending" in markdown
  with (out / "settings.csv").open() as f:
    rows = {r["setting"]: r for r in csv.DictReader(f)}
  assert float(rows["base"]["final/detection/AP50 mean"]) == pytest.approx(0.6)
  assert float(rows["base"]["best/detection/AP50 mean"]) == pytest.approx(0.6)
  assert rows["fusion=True"]["finished"] == "2" and rows["fusion=True"]["runs"] == "4"
  with (out / "runs.csv").open() as f:
    runs = list(csv.DictReader(f))
  assert len(runs) == 6 and runs[4]["status"] == "failed" and runs[5]["status"] == "pending"
  for png in ("curves.png", "final_metrics.png"):
    with Image.open(out / png) as im:
      assert im.format == "PNG" and im.size[0] > 300


def test_report_cli_prints_the_table_and_errors_on_a_missing_root(tmp_path, capsys):
  root = _fixture_root(tmp_path)
  assert report_cli.main(["--root", str(root), "--metrics", "grounding/AP50"]) == 0
  out = capsys.readouterr().out
  assert "grounding/AP50 (final)" in out and (root / "report.md").is_file()
  assert report_cli.main(["--root", str(tmp_path / "nope")]) == 2
  assert "not found" in capsys.readouterr().err
