"""Launchers and multi-process start-up without a cluster: the exact TPU pod and SLURM commands (through the real
shell scripts, with `srun` faked), the local launcher's output prefixing and failure handling, and how
glipjax.distributed reads its environment."""
import io
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

from glipjax import distributed
from launch import commands, local

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--config", "configs/glip_t.py:c", "--workdir", "/mnt/shared/runs/glip t"]


def test_tpu_pod_commands_create_ship_install_run_delete():
  got = commands.tpu_pod_commands(name="glip", zone="us-central2-b", accelerator_type="v4-32",
                                  version="tpu-ubuntu2204-base", project="proj", spot=True, train_args=TRAIN_ARGS)
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = ["--zone=us-central2-b", "--project=proj"]
  ssh = lambda command: tpu + ["ssh", "glip", *where, "--worker=all", f"--command={command}"]
  assert got == [
      tpu + ["create", "glip", *where, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"],
      ["git", "archive", "--format=tar.gz", "--output=/tmp/glipjax.tar.gz", "HEAD"],
      tpu + ["scp", "/tmp/glipjax.tar.gz", "glip:glipjax.tar.gz", *where, "--worker=all"],
      ssh("rm -rf glipjax && mkdir -p glipjax && tar -xzf glipjax.tar.gz -C glipjax"),
      ssh("cd glipjax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]'"),
      ssh("cd glipjax && PYTHONUNBUFFERED=1 JAX_PLATFORMS=tpu .venv/bin/python -m glipjax.train "
          "--config configs/glip_t.py:c --workdir '/mnt/shared/runs/glip t'"),
      tpu + ["delete", "glip", *where, "--quiet"]]
  cloned = commands.tpu_pod_commands(name="g", zone="z", accelerator_type="v5litepod-16", version="v",
                                     git_url="https://example.org/glipjax.git", keep=True, train_args=[])
  assert cloned[1][-1] == "--command=rm -rf glipjax && git clone --depth 1 https://example.org/glipjax.git glipjax"
  assert len(cloned) == 4 and "delete" not in cloned[-1]


def test_tpu_pod_script_prints_the_commands_it_would_run():
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "--name", "glip", "--zone", "z", "--accelerator_type", "v4-8",
                        "--dry_run", "--", *TRAIN_ARGS], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"))
  assert out.returncode == 0, out.stderr
  expected = commands.tpu_pod_commands(name="glip", zone="z", accelerator_type="v4-8", version="tpu-ubuntu2204-base",
                                       train_args=TRAIN_ARGS)
  assert out.stdout.splitlines() == ["+ " + shlex.join(c) for c in expected]


def test_slurm_srun_one_process_per_gpu_or_per_node():
  env = {"SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_NUM_NODES": "2"}
  argv, extra = commands.slurm_srun(env, TRAIN_ARGS, python="py")
  assert argv == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--kill-on-bad-exit=1", "--label",
                  "py", "-m", "glipjax.train", *TRAIN_ARGS]
  assert "GLIPJAX_LOCAL_DEVICE_IDS" not in extra  # JAX gives task i of a node its GPU i (SLURM_LOCALID)
  argv, extra = commands.slurm_srun(env, TRAIN_ARGS, per="node", python="py")
  assert argv[1:4] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
  assert extra["GLIPJAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
  with pytest.raises(ValueError, match="per"):
    commands.slurm_srun(env, [], per="socket")


def test_sbatch_script_runs_srun_with_the_trainer(tmp_path):
  """The real sbatch script inside a fake allocation: a fake `srun` records what it was asked to run."""
  record = tmp_path / "srun_args"
  fake = tmp_path / "bin" / "srun"
  fake.parent.mkdir()
  fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\necho "ids=$GLIPJAX_LOCAL_DEVICE_IDS" >> {record}\n')
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(REPO),
             SLURM_GPUS_ON_NODE="8", SLURM_JOB_NUM_NODES="3", GLIPJAX_PYTHON=sys.executable,
             GLIPJAX_PROCESS_PER="node")
  out = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), *TRAIN_ARGS], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert record.read_text().splitlines() == [
      "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--label", sys.executable, "-m",
      "glipjax.train", *TRAIN_ARGS, "ids=0,1,2,3,4,5,6,7"]


def test_local_env_for_cpu_and_gpu_processes():
  cpu = commands.local_env(1, 2, "127.0.0.1:1234", cpu_devices=2)
  assert cpu["GLIPJAX_COORDINATOR"] == "127.0.0.1:1234" and cpu["GLIPJAX_PROCESS_ID"] == "1"
  assert cpu["GLIPJAX_NUM_PROCESSES"] == "2" and cpu["JAX_NUM_CPU_DEVICES"] == "2" and cpu["JAX_PLATFORMS"] == "cpu"
  gpu = commands.local_env(1, 2, "127.0.0.1:1234", gpu_ids=[2, 3])
  assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and "JAX_NUM_CPU_DEVICES" not in gpu


def test_local_launcher_prefixes_output_and_stops_everyone_when_one_fails():
  out = io.StringIO()
  code = local.launch(["-c", "import os; print('rank', os.environ['GLIPJAX_PROCESS_ID'], 'of',"
                             " os.environ['GLIPJAX_NUM_PROCESSES'], os.environ['JAX_NUM_CPU_DEVICES'])"],
                      2, cpu_devices=3, out=out)
  assert code == 0 and sorted(out.getvalue().splitlines()) == ["[0] rank 0 of 2 3", "[1] rank 1 of 2 3"]
  # Rank 1 fails at once while rank 0 would wait forever (as in a collective): the launcher stops rank 0.
  start = time.time()
  code = local.launch(["-c", "import os, sys, time\nif os.environ['GLIPJAX_PROCESS_ID'] == '1': sys.exit(3)\n"
                             "time.sleep(120)"], 2, out=io.StringIO())
  assert code == 3 and time.time() - start < 60


def test_distributed_start_kind_comes_from_flags_or_environment(monkeypatch):
  for name in ("GLIPJAX_COORDINATOR", "GLIPJAX_NUM_PROCESSES", "GLIPJAX_PROCESS_ID", "GLIPJAX_LOCAL_DEVICE_IDS",
               "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_on_cloud_tpu", lambda: False)
  assert distributed.cluster_kind() == ("single", {})
  assert distributed.initialize() == "single"  # a plain process: nothing started
  assert distributed.cluster_kind("10.0.0.1:8476", 4, 2) == (
      "explicit", dict(coordinator_address="10.0.0.1:8476", num_processes=4, process_id=2))
  monkeypatch.setenv("GLIPJAX_COORDINATOR", "127.0.0.1:9000")
  with pytest.raises(ValueError, match="num_processes"):
    distributed.cluster_kind()
  monkeypatch.setenv("GLIPJAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("GLIPJAX_PROCESS_ID", "1")
  monkeypatch.setenv("GLIPJAX_LOCAL_DEVICE_IDS", "0,1")
  assert distributed.cluster_kind() == ("explicit", dict(coordinator_address="127.0.0.1:9000", num_processes=2,
                                                         process_id=1, local_device_ids=[0, 1]))
  for name in ("GLIPJAX_COORDINATOR", "GLIPJAX_NUM_PROCESSES", "GLIPJAX_PROCESS_ID", "GLIPJAX_LOCAL_DEVICE_IDS"):
    monkeypatch.delenv(name)
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.cluster_kind()[0] == "single"  # an interactive allocation running one task
  monkeypatch.setenv("SLURM_NTASKS", "16")
  assert distributed.cluster_kind() == ("slurm", dict(cluster_detection_method="slurm"))
  monkeypatch.delenv("SLURM_JOB_ID")
  monkeypatch.setattr(distributed, "_on_cloud_tpu", lambda: True)
  assert distributed.cluster_kind() == ("tpu", {})
