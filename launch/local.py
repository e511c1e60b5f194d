"""Start N local processes of one command as a multi-process JAX job (CPU, or one GPU set per process):

  python -m launch.local --num_processes 2 --cpu_devices 2 -- -m glipjax.train --config configs/tiny.py \
      --workdir runs/tiny2
  python -m launch.local --num_processes 4 --gpus_per_process 1 -- -m glipjax.train --config ... --workdir ...

A command that starts with a Python option (`-m`, `-c`) or a `.py` file runs with this Python. Each process gets the coordinator
127.0.0.1:<free port>, its rank and the process count in the environment (read by glipjax.distributed); its output
is forwarded line by line prefixed with `[rank]`. If one process fails the others are stopped, and the launcher
exits with the first failing exit code.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from launch import commands


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _forward(rank: int, stream, out) -> None:
  for line in stream:
    out.write(f"[{rank}] {line}")
    out.flush()


def launch(command: Sequence[str], num_processes: int, *, cpu_devices: int | None = None,
           gpus_per_process: int | None = None, out=sys.stdout, poll_seconds: float = 0.2) -> int:
  """Runs `num_processes` copies of `command`; returns 0 when all succeed, else the first failure's exit code."""
  command = list(command)
  if command[0].startswith("-") or command[0].endswith(".py"):  # python options (-m, -c) or a script
    command = [sys.executable] + command
  coordinator = f"127.0.0.1:{free_port()}"
  procs, threads = [], []
  for rank in range(num_processes):
    gpus = None if gpus_per_process is None else range(rank * gpus_per_process, (rank + 1) * gpus_per_process)
    env = dict(os.environ, **commands.local_env(rank, num_processes, coordinator, cpu_devices=cpu_devices,
                                                gpu_ids=gpus))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    procs.append(proc)
    threads.append(threading.Thread(target=_forward, args=(rank, proc.stdout, out), daemon=True))
    threads[-1].start()
  code = 0
  try:
    while any([p.poll() is None for p in procs]):  # a list: poll every process, not up to the first running one
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:
        code = failed[0]
        break
      time.sleep(poll_seconds)
  finally:
    _stop(procs)  # after a failure (or Ctrl-C) the others would wait for it in a collective forever
    for t in threads:
      t.join(timeout=10)
  return code or next((p.returncode for p in procs if p.returncode), 0)


def _stop(procs, grace_seconds: float = 10.0) -> None:
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    p.send_signal(signal.SIGTERM)
  deadline = time.time() + grace_seconds
  for p in alive:
    try:
      p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", "-n", type=int, default=2)
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--cpu_devices", type=int, default=1, help="fake CPU devices per process (default)")
  group.add_argument("--gpus_per_process", type=int, help="GPUs per process (CUDA_VISIBLE_DEVICES slices)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("no command given (put it after --)")
  return launch(command, args.num_processes,
                cpu_devices=None if args.gpus_per_process else args.cpu_devices,
                gpus_per_process=args.gpus_per_process)


if __name__ == "__main__":
  sys.exit(main())
