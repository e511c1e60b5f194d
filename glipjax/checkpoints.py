"""Checkpoint I/O: the train state and the data-iterator state under <workdir>/checkpoints (Orbax, async), the best
parameters under <workdir>/best, and restoring the newest intact checkpoint (a corrupt one falls back to the one
before it) for resuming or for inference."""
from __future__ import annotations

import logging
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from glipjax.evaluators import common as eval_common
from glipjax.runtime import Setup


def checkpoint_manager(workdir: pathlib.Path, cfg) -> ocp.CheckpointManager:
  directory = (workdir / "checkpoints").absolute()
  for partial in sorted(directory.glob(f"*{ocp.utils.TMP_DIR_SUFFIX}*")):
    logging.warning("ignoring the half-written checkpoint %s (a save that was interrupted, or is still running); "
                    "resuming from the newest finalized one", partial)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.max_to_keep,
                                         enable_async_checkpointing=cfg.checkpoint.async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def _data_restore_args(mngr: ocp.CheckpointManager, step: int, data_iter) -> dict:
  """The Composite item that restores `data_iter`: grain's per-process state when this checkpoint was written by
  as many processes as are running now; otherwise none (the caller positions the iterator from the step)."""
  saved = sorted((pathlib.Path(mngr.directory) / str(step) / "data").glob("process_*-of-*.json"))
  if not saved:  # a checkpoint glipjax.convert wrote: weights from elsewhere, no data read yet
    logging.info("checkpoint %d holds no data-iterator state: positioning the data iterator at global batch %d",
                 step, step)
    return {}
  if any(p.name == f"process_{jax.process_index()}-of-{jax.process_count()}.json" for p in saved):
    return dict(data=grain.checkpoint.CheckpointRestore(data_iter))
  logging.warning("checkpoint %d was written by %s, this run has %d: positioning the data iterator at global "
                  "batch %d from the step (global batches do not depend on the process count)", step,
                  saved[0].stem.split("-of-")[1] + " process(es)", jax.process_count(), step)
  return {}


def _newest_readable(mngr: ocp.CheckpointManager, restore):
  """(step, restore(step)) of the newest checkpoint that reads back intact: a corrupt one is reported and the one
  before it tried. (None, None) when none does."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, restore(step)
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means: fall back to an older one
      logging.error("checkpoint at step %d is unreadable (%s: %s); trying the previous one", step,
                    type(e).__name__, e)
  return None, None


def _sharded(abstract, shardings):
  return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings)


def restore_latest(mngr: ocp.CheckpointManager, s: Setup, data_iter=None):
  """Restores the train state (and `data_iter`) of the newest intact checkpoint."""
  target = _sharded(s.abstract_state, s.state_shardings)

  def restore(step):
    items = dict(state=ocp.args.StandardRestore(target))
    if data_iter is not None:
      items.update(_data_restore_args(mngr, step, data_iter))
    state = mngr.restore(step, args=ocp.args.Composite(**items))["state"]
    if data_iter is not None and "data" not in items:
      data_iter.set_state(dict(data_iter.get_state(), next_index=step))
    return state

  return _newest_readable(mngr, restore)


def checkpoint_location(workdir: pathlib.Path, checkpoint: str | pathlib.Path | None = None,
                        step: int | None = None) -> tuple[pathlib.Path, int | None]:
  """(checkpoints folder, step) that inference reads: `checkpoint` is a checkpoints folder (<run>/checkpoints,
  <run>/best, another run's) or one step of one (<run>/checkpoints/5000); default <workdir>/checkpoints."""
  if checkpoint is None:
    return (workdir / "checkpoints").absolute(), step
  path = pathlib.Path(checkpoint).expanduser().absolute()
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.name.isdigit() and any((path / item).is_dir() for item in ("state", "params")):
    return path.parent, int(path.name)
  return path, step


def restore_params(s: Setup, workdir: pathlib.Path, step: int | None = None, *,
                   checkpoint: str | pathlib.Path | None = None, ema: bool | None = None):
  """(step, params) for inference: the EMA parameters when the run keeps them (or as `ema` asks: True, False),
  else the parameters, of the newest intact checkpoint (or of `step`) of `checkpoint_location(workdir,
  checkpoint)`, read alone — not the optimizer moments, and no state initialised. Reads train-state checkpoints
  and the best-parameters ones (<run>/best: the evaluated parameters alone) alike. Call under
  `jax.set_mesh(s.mesh)`."""
  directory, step = checkpoint_location(workdir, checkpoint, step)
  mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_names=("state", "data", "params"))
  if ema and "ema" not in s.abstract_state:
    raise ValueError(f"{workdir} keeps no EMA parameters (optim.ema_decay is 0)")
  key = "ema" if ("ema" in s.abstract_state if ema is None else ema) else "params"
  target = _sharded(s.abstract_state[key], s.state_shardings[key])

  def restore(at):
    if (directory / str(at) / "params").is_dir():  # <run>/best: the evaluated parameters alone
      args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
      return mngr.restore(at, args=ocp.args.Composite(params=args))["params"]
    args = ocp.args.PyTreeRestore(item={key: target}, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args({key: target}))
    return mngr.restore(at, args=ocp.args.Composite(state=args))["state"][key]

  if step is not None:
    if step not in mngr.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} under {directory} (it has: "
                              f"{', '.join(map(str, mngr.all_steps())) or 'none'})")
    return step, restore(step)
  found, params = _newest_readable(mngr, restore)
  if params is None:
    raise FileNotFoundError(f"no readable checkpoint under {directory}")
  return found, params


def restore_for_inference(s: Setup, workdir: pathlib.Path):
  """(step, params, rest) of the newest readable checkpoint (see `restore_params`), with the model's
  non-parameter state. Call under `jax.set_mesh(s.mesh)`."""
  step, params = restore_params(s, workdir)
  return step, params, s.init_rest()


def check_best_metric(cfg, metrics: dict) -> None:
  """`checkpoint.best_metric` must be one of the metrics an evaluation produced (caught at the first one)."""
  if cfg.checkpoint.best_metric not in metrics:
    raise ValueError(f"checkpoint.best_metric {cfg.checkpoint.best_metric!r} is not among this run's evaluation "
                     f"metrics: {', '.join(sorted(metrics))}")


def best_checkpoint_manager(workdir: pathlib.Path, cfg) -> ocp.CheckpointManager | None:
  """<workdir>/best: the parameters (EMA when kept) of the evaluation with the highest `checkpoint.best_metric`."""
  metric = cfg.checkpoint.best_metric
  if not metric:
    return None
  if "/" not in metric or metric.split("/")[-1] not in eval_common.ALL_METRIC_NAMES:
    raise ValueError(f"checkpoint.best_metric {metric!r} is not an evaluation metric: a protocol or benchmark "
                     f"and one of {', '.join(eval_common.ALL_METRIC_NAMES)}, e.g. 'detection/AP', "
                     "'lvis_minival/AP'")
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric], best_mode="max",
                                         enable_async_checkpointing=cfg.checkpoint.async_save)
  return ocp.CheckpointManager((workdir / "best").absolute(), options=options, item_names=("params",))
