"""Command construction for every launcher, as plain functions (unit-tested in tests/test_launch.py), and the
CLI that `tpu_pod.sh` and `slurm.sbatch` call:

  python3 -m launch.commands tpu-pod --name glip --zone us-central2-b --accelerator_type v4-32 \
      [--dry_run] -- --config configs/glip_t.py:c --workdir /mnt/shared/glip_t
  python3 -m launch.commands slurm [--per gpu|node] -- --config configs/glip_t.py:c --workdir /shared/glip_t
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

TRAIN_MODULE = "glipjax.train"


def local_env(process_id: int, num_processes: int, coordinator: str, *, cpu_devices: int | None = None,
              gpu_ids: Sequence[int] | None = None) -> dict[str, str]:
  """Environment of one local process: the explicit coordinator that glipjax.distributed reads, and either
  `cpu_devices` fake CPU devices or the GPUs `gpu_ids` (via CUDA_VISIBLE_DEVICES)."""
  env = dict(GLIPJAX_COORDINATOR=coordinator, GLIPJAX_NUM_PROCESSES=str(num_processes),
             GLIPJAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
  if gpu_ids is not None:
    env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, gpu_ids)), JAX_PLATFORMS="cuda")
  else:
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(cpu_devices or 1))
  return env


def tpu_pod_commands(*, name: str, zone: str, accelerator_type: str, version: str, train_args: Sequence[str],
                     project: str | None = None, spot: bool = False, git_url: str | None = None,
                     archive: str = "/tmp/glipjax.tar.gz", remote_dir: str = "glipjax",
                     keep: bool = False) -> list[list[str]]:
  """create the TPU VM -> ship the code (git clone of `git_url`, else `git archive` of HEAD copied to every
  worker) -> install -> run the trainer on all workers at once -> delete (unless `keep`). jax.distributed finds
  the pod's workers itself (glipjax.distributed, 'tpu'); the workdir must be shared by all workers."""
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  ssh = lambda command: tpu + ["ssh", name, *where, "--worker=all", f"--command={command}"]
  create = tpu + ["create", name, *where, f"--accelerator-type={accelerator_type}", f"--version={version}"]
  commands = [create + (["--spot"] if spot else [])]
  if git_url:
    commands.append(ssh(f"rm -rf {remote_dir} && git clone --depth 1 {shlex.quote(git_url)} {remote_dir}"))
  else:
    commands.append(["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
    commands.append(tpu + ["scp", archive, f"{name}:{os.path.basename(archive)}", *where, "--worker=all"])
    commands.append(ssh(f"rm -rf {remote_dir} && mkdir -p {remote_dir} && "
                        f"tar -xzf {os.path.basename(archive)} -C {remote_dir}"))
  commands.append(ssh(f"cd {remote_dir} && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "
                      "'jax[tpu]'"))
  run_env = "PYTHONUNBUFFERED=1 JAX_PLATFORMS=tpu"
  commands.append(ssh(f"cd {remote_dir} && {run_env} .venv/bin/python -m {TRAIN_MODULE} "
                      + " ".join(shlex.quote(a) for a in train_args)))
  if not keep:
    commands.append(tpu + ["delete", name, *where, "--quiet"])
  return commands


def slurm_srun(env: Mapping[str, str], train_args: Sequence[str], *, per: str = "gpu",
               python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
  """(srun argv, extra environment) for a job step inside an allocation: one task per GPU (each takes the GPU
  of its local rank) or one per node (each takes all of the node's GPUs). glipjax.distributed reads the
  coordinator, task count and rank from SLURM's variables."""
  gpus = int(env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_GPUS_PER_NODE", "1").split(":")[-1])
  nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES", "1"))
  if per not in ("gpu", "node"):
    raise ValueError(f"per must be 'gpu' or 'node', not {per!r}")
  tasks_per_node = gpus if per == "gpu" else 1
  extra = {"PYTHONUNBUFFERED": "1"}
  if per == "node":
    extra["GLIPJAX_LOCAL_DEVICE_IDS"] = ",".join(map(str, range(gpus)))
  argv = ["srun", f"--nodes={nodes}", f"--ntasks={nodes * tasks_per_node}", f"--ntasks-per-node={tasks_per_node}",
          "--kill-on-bad-exit=1", "--label", python, "-m", TRAIN_MODULE, *train_args]
  return argv, extra


def _run_all(commands: list[list[str]], dry_run: bool, keep: bool) -> int:
  """Runs the commands in order; the last one (delete) also runs when an earlier one fails, unless `keep`."""
  body, cleanup = (commands, []) if keep else (commands[:-1], commands[-1:])
  code = 0
  try:
    for argv in body:
      print("+", shlex.join(argv), flush=True)
      if not dry_run and (code := subprocess.call(argv)):
        print(f"command failed with exit code {code}", file=sys.stderr)
        break
  finally:
    for argv in cleanup:
      print("+", shlex.join(argv), flush=True)
      if not dry_run:
        subprocess.call(argv)
  return code


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="target", required=True)
  tpu = sub.add_parser("tpu-pod", help="create a Cloud TPU VM pod, train on all workers, delete it")
  tpu.add_argument("--name", required=True)
  tpu.add_argument("--zone", required=True)
  tpu.add_argument("--accelerator_type", required=True, help="e.g. v4-32, v5litepod-16")
  tpu.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software version")
  tpu.add_argument("--project")
  tpu.add_argument("--spot", action="store_true")
  tpu.add_argument("--git_url", help="clone this on the workers instead of copying `git archive HEAD`")
  tpu.add_argument("--keep", action="store_true", help="do not delete the TPU VM at the end")
  tpu.add_argument("--dry_run", action="store_true", help="print the commands only")
  slurm = sub.add_parser("slurm", help="inside an sbatch allocation: srun the trainer on every node")
  slurm.add_argument("--per", choices=("gpu", "node"), default="gpu", help="one process per GPU or per node")
  slurm.add_argument("--dry_run", action="store_true")
  for p in (tpu, slurm):
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of glipjax.train")
  args = parser.parse_args(argv)
  train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
  if args.target == "tpu-pod":
    commands = tpu_pod_commands(name=args.name, zone=args.zone, accelerator_type=args.accelerator_type,
                                version=args.version, project=args.project, spot=args.spot, git_url=args.git_url,
                                keep=args.keep, train_args=train_args)
    return _run_all(commands, args.dry_run, args.keep)
  srun, extra = slurm_srun(os.environ, train_args, per=args.per)
  print("+", " ".join(f"{k}={v}" for k, v in extra.items()), shlex.join(srun), flush=True)
  if args.dry_run:
    return 0
  os.environ.update(extra)
  os.execvp(srun[0], srun)


if __name__ == "__main__":
  sys.exit(main())
