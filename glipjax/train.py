"""GLIP trainer: mesh -> data -> model -> shardings -> step -> checkpoint -> loop.

  python -m glipjax.train --config configs/tiny.py --workdir runs/tiny [--config.train.num_steps=200]

Restarting with the same workdir resumes from the newest intact checkpoint (train state and data iterator).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags
from clu import metric_writers
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

import glipjax  # noqa: F401
from glipjax import config_utils, distributed, perf, sharding
from glipjax.data import pipeline, synthetic_grounding
from glipjax.evaluators import common as eval_common, synthetic as synthetic_eval
from glipjax.models.glip import GLIP
from glipjax.ops import anchors as anchor_ops
from glipjax.ops.losses import glip_loss
from glipjax.optim import make_optimizer
from glipjax.text import tokenizers


@dataclasses.dataclass
class Setup:
  """Everything static about a run: mesh, model graph, abstract state and its shardings, anchors."""
  config: Any
  mesh: Any
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: Any
  state_shardings: Any
  rest_shardings: Any
  init: Any            # jitted () -> (state, rest)
  anchors: np.ndarray
  level_counts: tuple


def prepare_tokenizer(config, workdir: pathlib.Path) -> tokenizers.Tokenizer:
  d = config.data
  if d.tokenizer == "sentencepiece" and d.sentencepiece_vocab_size > 0:
    path = workdir / "tokenizer.model"
    if not path.exists() and jax.process_index() == 0:
      tokenizers.train_sentencepiece(pipeline.iter_captions(d, "train"), workdir / "tokenizer",
                                     d.sentencepiece_vocab_size)
    return tokenizers.SentencePieceTokenizer(path)
  return tokenizers.build_tokenizer(d.tokenizer, d.tokenizer_path)


def build(config) -> Setup:
  accum = config.train.grad_accum_steps
  if accum < 1 or config.train.global_batch_size % accum:
    raise ValueError(f"train.grad_accum_steps={accum} must be >= 1 and divide train.global_batch_size="
                     f"{config.train.global_batch_size}")
  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.mesh.rules]
  shapes = anchor_ops.level_shapes(tuple(config.data.canvas), config.model.anchors.strides)
  anchors = anchor_ops.generate_anchors(shapes, config.model.anchors.strides, config.model.anchors.sizes)
  new_model = lambda: GLIP(config.model, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  abstract_model = nnx.eval_shape(new_model)
  graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
  tx = make_optimizer(config.optim, config.train.num_steps, abstract_params)

  def init():
    _, params, rest = nnx.split(new_model(), nnx.Param, ...)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    if config.optim.ema_decay > 0:
      state["ema"] = params
    return state, rest

  abstract_state, abstract_rest = jax.eval_shape(init)
  state_shardings = sharding.param_shardings(abstract_state, mesh, rules)
  rest_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_rest)
  init_fn = jax.jit(init, out_shardings=(state_shardings, rest_shardings))
  return Setup(config, mesh, graphdef, tx, abstract_state, state_shardings, rest_shardings, init_fn, anchors,
               anchor_ops.level_counts(shapes))


def _micro_batches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, ...: every device's rows of the batch-sharded
  global array feed every micro-batch, so no device idles (a plain reshape would give micro-batch i to 1/k of
  the devices)."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(s: Setup):
  """One jitted update with donated state. With `train.grad_accum_steps` = k > 1 the global batch is split into k
  micro-batches scanned in sequence; each is normalised by its own positives (as a k-times smaller GLIP batch
  would be) and the gradients and metrics are averaged."""
  cfg = s.config
  accum = cfg.train.grad_accum_steps

  def loss_and_grads(params, rest, batch, dropout_key):
    model = nnx.merge(s.graphdef, params, rest, copy=True)  # own variables: reseeded inside scan traces too
    nnx.reseed(model, dropout=dropout_key, policy="match_shape")  # scanned layers hold one stream per layer
    rest = nnx.state(model, nnx.Not(nnx.Param))

    def loss_fn(params):
      model = nnx.merge(s.graphdef, params, rest, copy=True)  # fresh variables: dropout advances its RNG count
      out = model(batch["image"], batch["input_ids"], batch["attention_mask"], deterministic=False)
      loss, metrics = glip_loss(out, batch, s.anchors, s.level_counts, focal_alpha=cfg.train.focal_alpha,
                                focal_gamma=cfg.train.focal_gamma, reg_loss_weight=cfg.train.reg_loss_weight)
      return loss, dict(metrics, loss=loss)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, metrics

  def train_step(state, rest, batch, rng):
    # A fresh dropout key per step: fold the step into the run's key (RNG state is not carried between steps).
    key = jax.random.fold_in(rng, state["step"])
    if accum == 1:
      grads, metrics = loss_and_grads(state["params"], rest, batch, key)
    else:
      micro = jax.tree.map(lambda x: _micro_batches(x, accum), batch)

      def accumulate(total, xs):
        i, mb = xs
        return jax.tree.map(jnp.add, total, loss_and_grads(state["params"], rest, mb, jax.random.fold_in(key, i))), None

      shapes = jax.eval_shape(loss_and_grads, state["params"], rest, jax.tree.map(lambda x: x[0], micro), key)
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
      grads, metrics = jax.tree.map(lambda t: t / accum, total)
    updates, opt_state = s.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    if "ema" in state:
      d = cfg.optim.ema_decay
      new["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
    return new, dict(metrics, grad_norm=optax.tree.norm(grads))

  # Pinned output layout: left to propagation, some updated parameters / moments come back laid out unlike
  # the rules (and unlike what the compiled step expects for the next call).
  return jax.jit(train_step, donate_argnums=(0,), out_shardings=(s.state_shardings, sharding.replicated(s.mesh)))


# The figures a run prints at each evaluation (all of them go to TensorBoard and metrics.jsonl).
HEADLINE = ("detection/AP50", "detection/text_blind/AP50", "grounding/AP50", "grounding/colour_swapped/AP50",
            "grounding/absent_kinds/AP50")


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
  if not saved:
    raise FileNotFoundError(f"checkpoint {step} holds no data-iterator state")
  if any(p.name == f"process_{jax.process_index()}-of-{jax.process_count()}.json" for p in saved):
    return dict(data=grain.checkpoint.CheckpointRestore(data_iter))
  logging.warning("checkpoint %d was written by %s, this run has %d: positioning the data iterator at global "
                  "batch %d from the step (global batches do not depend on the process count)", step,
                  saved[0].stem.split("-of-")[1] + " process(es)", jax.process_count(), step)
  return {}


def restore_latest(mngr: ocp.CheckpointManager, s: Setup, data_iter=None):
  """Restores the newest checkpoint that reads back intact; a corrupt one is reported and the previous one used."""
  target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), s.abstract_state,
                        s.state_shardings)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      items = dict(state=ocp.args.StandardRestore(target))
      if data_iter is not None:
        items.update(_data_restore_args(mngr, step, data_iter))
      state = mngr.restore(step, args=ocp.args.Composite(**items))["state"]
      if data_iter is not None and "data" not in items:
        data_iter.set_state(dict(data_iter.get_state(), next_index=step))
      return step, state
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means: fall back to an older one
      logging.error("checkpoint at step %d is unreadable (%s: %s); trying the previous one", step,
                    type(e).__name__, e)
  return None, None


def restore_for_inference(s: Setup, workdir: pathlib.Path):
  """(step, params, rest) of the newest readable checkpoint: EMA params when the run keeps them. Call under
  `jax.set_mesh(s.mesh)`."""
  step, state = restore_latest(checkpoint_manager(workdir, s.config), s)
  if state is None:
    raise FileNotFoundError(f"no readable checkpoint under {workdir / 'checkpoints'}")
  _, rest = s.init()
  return step, state.get("ema", state["params"]), rest


def best_checkpoint_manager(workdir: pathlib.Path, cfg) -> ocp.CheckpointManager | None:
  """<workdir>/best: the parameters (EMA when kept) of the evaluation with the highest `checkpoint.best_metric`."""
  metric = cfg.checkpoint.best_metric
  if not metric:
    return None
  if metric.split("/")[-1] not in eval_common.METRIC_NAMES:
    raise ValueError(f"checkpoint.best_metric {metric!r} is not an evaluation metric: a protocol and one of "
                     f"{eval_common.METRIC_NAMES}, e.g. 'detection/AP'")
  options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[metric], best_mode="max",
                                         enable_async_checkpointing=cfg.checkpoint.async_save)
  return ocp.CheckpointManager((workdir / "best").absolute(), options=options, item_names=("params",))


def check_finite(step: int, metrics: dict) -> dict[str, float]:
  """Host floats of a step's metrics; stops the run, naming the step and the cause, if any is NaN/inf."""
  values = {k: float(v) for k, v in metrics.items()}
  bad = sorted(k for k, v in values.items() if not np.isfinite(v))
  if bad:
    raise FloatingPointError(
        f"non-finite {', '.join(bad)} at step {step} ({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); "
        "nothing from this step was saved. Lower optim.learning_rate or check the data of this step.")
  return values


def step_perf_stats(compiled, global_flops: float, config, *, compile_seconds: float) -> dict[str, float]:
  """Static facts of the compiled train step: compile time, FLOPs per device, memory. The MFU numerator is the
  matmul/conv count of the step's jaxpr (`global_flops`, scans multiplied out) split over the devices; XLA's own
  count (which sees a scan body once) is logged beside it."""
  stats = dict(compile_seconds=compile_seconds, flops_per_step_per_device=global_flops / jax.device_count(),
               xla_flops_per_step_per_device=float(perf.compiled_cost(compiled).get("flops", 0.0)))
  stats.update({f"memory_{k}": float(v) for k, v in perf.memory_summary(compiled).items()})
  device = jax.devices()[0]
  peak = perf.peak_flops_per_device(device.device_kind, config.model.dtype,
                                    config.train.peak_flops_per_device or None)
  if peak:
    stats["peak_flops_per_device"] = float(peak)
  return stats


def throughput_scalars(perf_stats: dict, step_seconds: float, config) -> dict[str, float]:
  out = dict(step_seconds=step_seconds, images_per_second=config.train.global_batch_size / max(step_seconds, 1e-9))
  flops = perf_stats.get("flops_per_step_per_device", 0.0)
  if flops:
    out["tflops_per_device"] = flops / max(step_seconds, 1e-9) / 1e12
  if perf_stats.get("peak_flops_per_device"):
    out["mfu"] = perf.mfu(flops, step_seconds, 1, perf_stats["peak_flops_per_device"])
  stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes_in_use"] = float(stats["peak_bytes_in_use"])
  return out


class PreemptionGuard:
  """SIGTERM (what schedulers and preemptible VMs send first) -> save at the next step and exit cleanly. With
  several processes JAX's preemption sync manager (via Orbax) picks a step at which all of them stop."""

  def __init__(self):
    self.requested, self._previous = False, None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving at the next step, then exiting", signum)
    self.requested = True

  def should_stop(self, mngr: ocp.CheckpointManager, step: int) -> bool:
    return self.requested or (jax.process_count() > 1 and mngr.reached_preemption(step))

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Profiler:
  """A jax.profiler trace of `profile_num_steps` steps into <workdir>/profile, from `profile_start_step` or when
  a file <workdir>/PROFILE appears (checked every step; the file is removed when the trace starts)."""

  def __init__(self, workdir: pathlib.Path, train_cfg):
    self.out, self.trigger = workdir / "profile", workdir / "PROFILE"
    self.start, self.num, self.stop_at = train_cfg.profile_start_step, train_cfg.profile_num_steps, None

  def step(self, step: int) -> None:
    if self.stop_at is not None and step >= self.stop_at:
      self.close()
    if self.stop_at is None and (step == self.start or self.trigger.exists()):
      self.trigger.unlink(missing_ok=True)
      jax.profiler.start_trace(str(self.out))
      self.stop_at = step + max(self.num, 1)
      logging.info("profiling steps %d..%d into %s", step, self.stop_at - 1, self.out)

  def close(self) -> None:
    if self.stop_at is not None:
      jax.effects_barrier()
      jax.profiler.stop_trace()
      self.stop_at = None


class JsonlWriter:
  def __init__(self, path: pathlib.Path, enabled: bool):
    self.path, self.enabled = path, enabled

  def write(self, step: int, metrics: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")


def train_and_evaluate(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  if lead:
    config_utils.save_config(config, workdir)
  t_start = time.time()
  if lead:  # the other processes wait, then read what process 0 wrote (a shared file system)
    if config.data.name == "synthetic_grounding":
      synthetic_grounding.prepare(config.data.data_dir, config.data.builder_config)
    prepare_tokenizer(config, workdir)
  distributed.barrier("glipjax: dataset and tokenizer prepared")
  tokenizer = prepare_tokenizer(config, workdir)
  if tokenizer.vocab_size > config.model.language.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.language.vocab_size is "
                     f"{config.model.language.vocab_size}")

  s = build(config)
  with jax.set_mesh(s.mesh), sharding.activation_rules(config.mesh.rules):
    batch_sharding = sharding.batch_sharding(s.mesh, config.mesh.batch_axes)
    train_iter = pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=config.train.global_batch_size,
                                        train=True, seed=config.seed, max_query_len=config.model.max_query_len,
                                        rows=distributed.process_rows(batch_sharding, config.train.global_batch_size))
    mngr = checkpoint_manager(workdir, config)
    start_step, state = restore_latest(mngr, s, train_iter)
    _, rest = s.init()  # rng bookkeeping only; parameters come from the checkpoint when resuming
    if state is None:
      state, rest = s.init()
      start_step = 0
    else:
      logging.info("resumed from step %d", start_step)
    train_step = make_train_step(s)
    rng = jax.random.key(config.seed)
    writer = metric_writers.create_default_writer(str(workdir), just_logging=not lead, asynchronous=False)
    jsonl = JsonlWriter(workdir / "metrics.jsonl", lead)
    best = best_checkpoint_manager(workdir, config)
    guard, profiler = PreemptionGuard(), Profiler(workdir, config.train)

    num_steps = config.train.num_steps
    bar = tqdm(total=num_steps, initial=start_step, disable=not (progress and lead), desc="train", unit="step")
    eval_metrics: dict = {}  # nested by protocol (evaluators/synthetic.py)
    predict_fn = eval_common.make_predict_fn(s.graphdef, s.anchors, s.level_counts, config.eval)
    perf_stats: dict = {}
    compiled, preempted = None, False
    pending = None  # the previous step's (step, metrics): checked once the next step is queued, so the host
    last_log = (start_step, time.time())  # prepares batch n+1 while the device runs step n
    for step in range(start_step, num_steps):
      batch = sharding.global_batch(next(train_iter), batch_sharding)
      if compiled is None:  # compile ahead of time: exact compile time, FLOPs and memory of the real step
        t0 = time.time()
        compiled = train_step.lower(state, rest, batch, rng).compile()
        compile_seconds = time.time() - t0
        perf_stats = step_perf_stats(compiled, perf.jaxpr_flops(train_step, state, rest, batch, rng), config,
                                     compile_seconds=compile_seconds)
        logging.info("train step: %s", perf_stats)
        jsonl.write(step, {f"perf/{k}": v for k, v in perf_stats.items()})
        last_log = (step, time.time())
      profiler.step(step)
      state, metrics = compiled(state, rest, batch, rng)
      if pending is not None:
        bar.set_postfix(loss=f"{check_finite(*pending)['loss']:.3f}")
      done = step + 1
      pending = (done, metrics)
      bar.update(1)
      preempted = guard.should_stop(mngr, done)
      at = lambda every: every > 0 and done % every == 0 or done == num_steps or preempted
      if at(config.train.log_every):
        scalars = check_finite(*pending)  # never log or save a non-finite state
        step_seconds = (time.time() - last_log[1]) / (done - last_log[0])
        last_log = (done, time.time())
        scalars.update(throughput_scalars(perf_stats, step_seconds, config))
        writer.write_scalars(done, scalars)
        jsonl.write(done, scalars)
      if at(config.train.checkpoint_every):
        check_finite(*pending)
        mngr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                data=grain.checkpoint.CheckpointSave(train_iter)))
      if preempted:
        bar.write(f"preemption signal: saved step {done}; exiting cleanly (rerun the same command to resume)")
        break
      if config.train.eval_every > 0 and at(config.train.eval_every):
        params = state.get("ema", state["params"])
        eval_metrics = synthetic_eval.evaluate(lambda b: predict_fn(params, rest, b), config, tokenizer, s.mesh,
                                               workdir=workdir if done == num_steps else None)
        flat = eval_common.flatten(eval_metrics)
        writer.write_scalars(done, {f"eval/{k}": v for k, v in flat.items()})
        jsonl.write(done, {f"eval/{k}": v for k, v in flat.items()})
        bar.write(f"step {done}: " + ", ".join(f"{k}={flat[k]:.3f}" for k in HEADLINE if k in flat))
        if best is not None:
          best.save(done, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), metrics=flat)
    if pending is not None:
      check_finite(*pending)
    bar.close()
    profiler.close()
    guard.close()
    for m in (mngr, best):
      if m is not None:
        m.wait_until_finished()
        m.close()
    writer.flush()

  final = dict(eval_metrics, steps=int(pending[0] if pending else start_step), wall_seconds=time.time() - t_start,
               preempted=preempted, skipped_examples=dict(pipeline.SKIPPED), **perf_stats)
  if pending is not None:  # throughput of the last logging interval
    final.update({k: v for k, v in scalars.items() if k in ("step_seconds", "images_per_second",
                                                               "tflops_per_device", "mfu")})
  if lead:
    (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
  return final


def main(argv):
  del argv
  distributed.initialize_from_flags()  # before any device use
  final = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps({k: v for k, v in final.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so other entry points can import this module.
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py", lock_config=True)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and pictures go")
  flags.mark_flags_as_required(["config", "workdir"])
  distributed.define_flags()
  app.run(main)
