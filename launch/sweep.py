"""Run an ablation sweep (a file in configs/sweeps/, see glipjax/sweeps.py): locally N runs at a time, or write the
job scripts of a cluster launcher.

  python -m launch.sweep --sweep configs/sweeps/fusion_ablation.py --root runs/fusion_ablation --parallel 2
  python -m launch.sweep --sweep ... --root ... --dry_run                 # list the runs and their commands
  python -m launch.sweep --sweep ... --root /shared/sweep --target slurm  # writes <root>/sweep.sbatch (array job)
  python -m launch.sweep --sweep ... --root gs://.../sweep --target tpu_pod  # writes <root>/tpu_pod.sh

Each run trains in <root>/<run name> (train + evaluate, as `python -m glipjax.train`) with its log in
<root>/<run name>/train.log. Finished runs (final_metrics.json written) are skipped; interrupted ones resume from
their checkpoints. Locally every run gets an equal share of the CPU cores (`--devices cpu`) or one GPU
(`--devices gpu`). Then: python -m launch.report --root <root>.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from glipjax import sweeps
from launch.commands import TRAIN_MODULE

POLL_SECONDS = 5.0


def cpu_shares(cores: Sequence[int], parallel: int) -> list[list[int]]:
  """Splits the cores into `parallel` disjoint, near-equal sets (each run is pinned to one)."""
  parallel = max(1, min(parallel, len(cores)))
  return [list(cores[i::parallel]) for i in range(parallel)]


def train_command(run: sweeps.Run, sweep_file: str, python: str = sys.executable) -> list[str]:
  return [python, "-m", TRAIN_MODULE, *run.train_args(sweep_file)]


def slurm_array_script(runs: Sequence[sweeps.Run], sweep_file: str, root: str, *, gpus_per_run: int = 1,
                       python: str = ".venv/bin/python") -> str:
  """One SLURM array job, one task per run (each a single-node glipjax job through launch.commands slurm);
  resubmitting resumes unfinished runs, and tasks whose run finished exit at once."""
  lines = [
      "#!/bin/bash",
      f"# The {len(runs)} runs of {sweep_file}: sbatch {root}/sweep.sbatch (from the repository root, on a shared",
      "# file system). Written by python -m launch.sweep --target slurm.",
      "#SBATCH --job-name=glipjax-sweep",
      f"#SBATCH --array=0-{len(runs) - 1}",
      "#SBATCH --nodes=1",
      f"#SBATCH --gpus-per-node={gpus_per_run}",
      "#SBATCH --signal=TERM@120",
      f"#SBATCH --output={root}/slurm-%A_%a.out",
      "set -euo pipefail",
      'cd "${SLURM_SUBMIT_DIR:-.}"',
      "RUNS=(",
      *[f"  {shlex.quote(shlex.join(run.train_args(sweep_file)))}" for run in runs],
      ")",
      "WORKDIRS=(",
      *[f"  {shlex.quote(str(run.workdir))}" for run in runs],
      ")",
      'if [ -f "${WORKDIRS[$SLURM_ARRAY_TASK_ID]}/' + sweeps.FINAL_METRICS + '" ]; then echo finished; exit 0; fi',
      'eval "set -- ${RUNS[$SLURM_ARRAY_TASK_ID]}"',
      f'exec "${{GLIPJAX_PYTHON:-{python}}}" -m launch.commands slurm --per gpu -- "$@"',
  ]
  return "\n".join(lines) + "\n"


def tpu_pod_script(runs: Sequence[sweeps.Run], sweep_file: str, root: str, *, name_prefix: str = "glip-sweep",
                   python: str = "python3") -> str:
  """One launch.commands tpu-pod command per run (create a TPU VM, train, delete), run one after another;
  ZONE and ACCELERATOR_TYPE come from the environment."""
  lines = ["#!/bin/bash", f"# The {len(runs)} runs of {sweep_file} on Cloud TPU VMs, one after another. Written by",
           "# python -m launch.sweep --target tpu_pod; the root must be a path every worker shares (e.g. gs://).",
           "#   ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 bash " + f"{root}/tpu_pod.sh",
           "set -euo pipefail", ': "${ZONE:?set ZONE}" "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE}"']
  for i, run in enumerate(runs):
    lines.append(shlex.join([python, "-m", "launch.commands", "tpu-pod", "--name", f"{name_prefix}-{i}"])
                 + ' --zone "$ZONE" --accelerator_type "$ACCELERATOR_TYPE" -- '
                 + shlex.join(run.train_args(sweep_file)))
  return "\n".join(lines) + "\n"


def prepare_data(config) -> None:
  """Builds the embedded datasets the runs train on once, before they start: parallel runs would otherwise all
  build the same TFDS dataset at once."""
  from glipjax.data import pipeline, sources
  for name, _ in pipeline.source_weights(config.data):
    sources.prepare_builtin(config.data.data_dir, name)


def _steps_done(run: sweeps.Run) -> int:
  """The newest step logged in the run's metrics.jsonl (0 before the first log)."""
  path = run.workdir / "metrics.jsonl"
  if not path.is_file():
    return 0
  step = 0
  with path.open() as f:
    for line in f:
      try:
        step = max(step, int(json.loads(line).get("step", 0)))
      except (ValueError, AttributeError):
        continue
  return step


def run_local(sweep: sweeps.Sweep, *, parallel: int, devices: str, python: str = sys.executable,
              out=None) -> int:
  """Runs the unfinished runs, `parallel` at a time, printing a progress line when anything changes; returns
  the number of runs that failed (each leaves sweep_status.json and its train.log)."""
  out = out or sys.stdout
  todo = [r for r in sweep.runs if r.status() != "finished"]
  finished = len(sweep.runs) - len(todo)
  print(f"{len(sweep.runs)} runs: {finished} finished (skipped), {len(todo)} to run, {parallel} at a time",
        file=out, flush=True)
  if devices == "gpu":
    slots = [dict(CUDA_VISIBLE_DEVICES=str(i), JAX_PLATFORMS="cuda") for i in range(parallel)]
    affinity = [None] * parallel
  else:
    cores = sorted(os.sched_getaffinity(0))
    affinity = cpu_shares(cores, parallel)
    slots = [dict(JAX_PLATFORMS="cpu") for _ in affinity]
  total_steps = sweep.base.train.num_steps * len(sweep.runs)
  free, running, failed = list(range(len(slots))), {}, 0
  last_line = ""
  while todo or running:
    while todo and free:
      run, slot = todo.pop(0), free.pop(0)
      run.workdir.mkdir(parents=True, exist_ok=True)
      (run.workdir / sweeps.STATUS_FILE).unlink(missing_ok=True)   # a failed run is retried
      log = (run.workdir / "train.log").open("a")
      env = dict(os.environ, PYTHONUNBUFFERED="1", **slots[slot])
      # The seeds of a setting compile the same programs: a persistent cache shared by the runs compiles each once.
      env.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(sweep.runs[0].workdir).parent / ".jax_cache"))
      env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
      cores = affinity[slot]
      proc = subprocess.Popen(train_command(run, str(sweep.path), python), stdout=log, stderr=subprocess.STDOUT,
                              env=env, preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c)) if cores else None)
      running[proc] = (run, slot, log, time.time())
      print(f"  start {run.name}" + (f" (cores {','.join(map(str, cores))})" if cores else f" (GPU {slot})"),
            file=out, flush=True)
    time.sleep(POLL_SECONDS)
    for proc in [p for p in running if p.poll() is not None]:
      run, slot, log, t0 = running.pop(proc)
      log.close()
      free.append(slot)
      if proc.returncode == 0 and run.status() == "finished":
        finished += 1
        print(f"  done  {run.name} in {time.time() - t0:.0f} s", file=out, flush=True)
      else:
        failed += 1
        (run.workdir / sweeps.STATUS_FILE).write_text(json.dumps(dict(status="failed", returncode=proc.returncode)))
        print(f"  FAILED {run.name} (exit {proc.returncode}): see {run.workdir / 'train.log'}", file=out, flush=True)
    steps = sum(sweep.base.train.num_steps if r.status() == "finished" else _steps_done(r) for r in sweep.runs)
    line = (f"[{finished}/{len(sweep.runs)} finished, {len(running)} running, {failed} failed] "
            f"steps {steps}/{total_steps} ({100 * steps / max(total_steps, 1):.0f}%)")
    if line != last_line:
      print(line, file=out, flush=True)
      last_line = line
  return failed


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sweep", required=True, help="a sweep file, e.g. configs/sweeps/fusion_ablation.py")
  parser.add_argument("--root", required=True, help="the sweep's folder: one workdir per run inside")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time (local target)")
  parser.add_argument("--devices", choices=("cpu", "gpu"), default="cpu",
                      help="local runs share the CPU cores, or take one GPU each")
  parser.add_argument("--target", choices=("local", "slurm", "tpu_pod"), default="local")
  parser.add_argument("--dry_run", action="store_true", help="list the runs and their commands, run nothing")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  try:
    sweep = sweeps.load(args.sweep, args.root)
  except (FileNotFoundError, ValueError, KeyError, SyntaxError, ImportError) as e:
    print(f"launch.sweep: {e}", file=sys.stderr)
    return 2
  root = pathlib.Path(args.root)
  if not args.dry_run:
    sweeps.write_manifest(sweep, root)
  if args.target != "local":
    script = (slurm_array_script(sweep.runs, args.sweep, args.root) if args.target == "slurm"
              else tpu_pod_script(sweep.runs, args.sweep, args.root))
    path = root / ("sweep.sbatch" if args.target == "slurm" else "tpu_pod.sh")
    if args.dry_run:
      print(script, end="")
      return 0
    path.write_text(script)
    print(f"wrote {path} ({len(sweep.runs)} runs): " +
          (f"sbatch {path}" if args.target == "slurm" else f"ZONE=... ACCELERATOR_TYPE=... bash {path}"))
    return 0
  if args.dry_run:
    for run in sweep.runs:
      print(f"{run.status():12s} {run.name}\n  {shlex.join(train_command(run, args.sweep, 'python'))}")
    return 0
  if any(r.status() != "finished" for r in sweep.runs):
    prepare_data(sweep.base)
  failed = run_local(sweep, parallel=args.parallel, devices=args.devices)
  print(f"sweep done: {failed} failed; report: python -m launch.report --root {root}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
