"""The GLIP training loop: data -> jitted step -> checkpoints -> periodic evaluation, with exact resume.

`train_and_evaluate(config, workdir)` is what `python -m glipjax.train` and the quickstart run. Restarting with
the same workdir resumes from the newest intact checkpoint (train state and data iterator).
"""
from __future__ import annotations

import json
import logging
import pathlib
import time

import grain
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from clu import metric_writers
from flax import nnx
from tqdm import tqdm

import glipjax  # noqa: F401
from glipjax import checkpoints, config_utils, distributed, hooks, modes, optim, perf, runtime, sharding, warm_start
from glipjax.data import pipeline, sources
from glipjax.data.batch import model_images
from glipjax import evaluators
from glipjax.evaluators import common as eval_common
from glipjax.ops.losses import glip_loss


def _micro_batches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, ...: every device's rows of the batch-sharded
  global array feed every micro-batch, so no device idles (a plain reshape would give micro-batch i to 1/k of
  the devices)."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(s: runtime.Setup):
  """One jitted update with donated state. With `train.grad_accum_steps` = k > 1 the global batch is split into k
  micro-batches scanned in sequence; each is normalised by its own positives (as a k-times smaller GLIP batch
  would be) and the gradients and metrics are averaged."""
  cfg = s.config
  accum = cfg.train.grad_accum_steps
  image_text_weight = cfg.train.image_text_loss_weight

  def loss_and_grads(trainable, frozen, rest, batch, dropout_key):
    """Gradients of the trainable partition only: frozen parameters are constants of the loss, so XLA computes
    no backward pass that only they would need (a frozen encoder's, say)."""
    params = optim.combine(s.trainable, trainable, frozen)
    model = nnx.merge(s.graphdef, params, rest, copy=True)  # own variables: reseeded inside scan traces too
    nnx.reseed(model, dropout=dropout_key, policy="match_shape")  # scanned layers hold one stream per layer
    rest = nnx.state(model, nnx.Not(nnx.Param))

    def loss_fn(trainable):
      params = optim.combine(s.trainable, trainable, frozen)
      model = nnx.merge(s.graphdef, params, rest, copy=True)  # fresh variables: dropout advances its RNG count
      out = model(model_images(batch["image"], batch["image_hw"]), batch["input_ids"], batch["attention_mask"],
                  deterministic=False, pooled=image_text_weight > 0)
      anchors, level_counts = s.anchors_for(batch["image"].shape[1:3])  # static: this batch's canvas
      loss, metrics = glip_loss(out, batch, anchors, level_counts, focal_alpha=cfg.train.focal_alpha,
                                focal_gamma=cfg.train.focal_gamma, reg_loss_weight=cfg.train.reg_loss_weight,
                                token_loss=cfg.model.head.alignment != "contrastive",
                                contrastive_align_weight=cfg.train.contrastive_align_weight,
                                image_text_weight=image_text_weight,
                                image_text_temperature=cfg.train.image_text_temperature)
      return loss, dict(metrics, loss=loss)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return grads, metrics

  def train_step(state, rest, batch, rng):
    # A fresh dropout key per step: fold the step into the run's key (RNG state is not carried between steps).
    key = jax.random.fold_in(rng, state["step"])
    trainable, frozen = optim.partition(state["params"], s.trainable)
    if accum == 1:
      grads, metrics = loss_and_grads(trainable, frozen, rest, batch, key)
    else:
      micro = jax.tree.map(lambda x: _micro_batches(x, accum), batch)

      def accumulate(total, xs):
        i, mb = xs
        grads_metrics = loss_and_grads(trainable, frozen, rest, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, total, grads_metrics), None

      shapes = jax.eval_shape(loss_and_grads, trainable, frozen, rest, jax.tree.map(lambda x: x[0], micro), key)
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum), micro))
      grads, metrics = jax.tree.map(lambda t: t / accum, total)
    updates, opt_state = s.tx.update(grads, state["opt_state"], trainable)
    params = optim.combine(s.trainable, optax.apply_updates(trainable, updates), frozen)
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


def train_and_evaluate(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = modes.resolve(config)  # train.mode's parameter patterns, as config.json records them
  lead = jax.process_index() == 0
  if lead:
    config_utils.save_config(config, workdir)
  t_start = time.time()
  if lead:  # the other processes wait, then read what process 0 wrote (a shared file system)
    for name in [n for n, _ in pipeline.source_weights(config.data)] + [config.data.eval_source]:
      sources.prepare_builtin(config.data.data_dir, name)  # the embedded dataset, when named and not yet built
    warm_start.prepare_workdir(config, workdir)
    runtime.prepare_tokenizer(config, workdir)
  distributed.barrier("glipjax: dataset and tokenizer prepared")
  tokenizer = runtime.prepare_tokenizer(config, workdir)
  if tokenizer.vocab_size > config.model.language.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.language.vocab_size is "
                     f"{config.model.language.vocab_size}")

  s = runtime.build(config)
  with jax.set_mesh(s.mesh), sharding.activation_rules(config.mesh.rules):
    batch_sharding = sharding.batch_sharding(s.mesh, config.mesh.batch_axes)
    train_iter = pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=config.train.global_batch_size,
                                        train=True, seed=config.seed, max_query_len=config.model.max_query_len,
                                        rows=distributed.process_rows(batch_sharding, config.train.global_batch_size))
    mngr = checkpoints.checkpoint_manager(workdir, config)
    start_step, state = checkpoints.restore_latest(mngr, s, train_iter)
    if state is None:  # nothing to resume: the initialisers, then train.init_from & co (glipjax/warm_start.py)
      state, rest = s.init()
      start_step = 0
      params, loaded = warm_start.warm_start(s, state["params"])
      if loaded:
        state = jax.jit(lambda p: runtime.state_from_params(s.config, s.tx, s.trainable, p),
                        out_shardings=s.state_shardings)(params)
    else:
      rest = s.init_rest()  # the model's non-parameter state (RNG counters); the parameters came from the checkpoint
      logging.info("resumed from step %d", start_step)
    finished = workdir / "final_metrics.json"
    if start_step >= config.train.num_steps and finished.exists():  # a rerun of a finished run keeps its results
      mngr.close()
      print(f"{workdir} is already trained to step {start_step}: kept its final_metrics.json (raise "
            "train.num_steps to train further, or use a new workdir)")
      return json.loads(finished.read_text())
    train_step = make_train_step(s)
    rng = jax.random.key(config.seed)
    writer = metric_writers.create_default_writer(str(workdir), just_logging=not lead, asynchronous=False)
    jsonl = hooks.JsonlWriter(workdir / "metrics.jsonl", lead)
    best = checkpoints.best_checkpoint_manager(workdir, config)
    guard, profiler = hooks.PreemptionGuard(), hooks.Profiler(workdir, config.train)

    num_steps = config.train.num_steps
    bar = tqdm(total=num_steps, initial=start_step, disable=not (progress and lead), desc="train", unit="step")
    eval_metrics: dict = {}  # nested by protocol (glipjax/evaluators)
    predict_fn = eval_common.make_predict_fn(s.graphdef, config)
    perf_stats: dict = {}
    compiled, preempted = {}, False  # canvas (H, W) -> the step compiled for it (aspect-ratio buckets)
    pending = None  # the previous step's (step, metrics): checked once the next step is queued, so the host
    last_log = (start_step, time.time())  # prepares batch n+1 while the device runs step n
    for step in range(start_step, num_steps):
      batch = sharding.global_batch(next(train_iter), batch_sharding)
      canvas = tuple(batch["image"].shape[1:3])
      if canvas not in compiled:  # compile ahead of time: exact compile time, FLOPs and memory of the real step
        t0 = time.time()
        compiled[canvas] = train_step.lower(state, rest, batch, rng).compile()
        compile_seconds = time.time() - t0
        stats = hooks.step_perf_stats(compiled[canvas], perf.jaxpr_flops(train_step, state, rest, batch, rng),
                                      config, compile_seconds=compile_seconds)
        perf_stats = perf_stats or stats  # throughput figures use the first canvas's step
        logging.info("train step for canvas %s: %s", canvas, stats)
        jsonl.write(step, {f"perf/{k}": v for k, v in stats.items()})
        last_log = (step, time.time())
      profiler.step(step)
      state, metrics = compiled[canvas](state, rest, batch, rng)
      if pending is not None:
        bar.set_postfix(loss=f"{hooks.check_finite(*pending)['loss']:.3f}")
      done = step + 1
      pending = (done, metrics)
      bar.update(1)
      preempted = guard.should_stop(mngr, done)
      at = lambda every: every > 0 and done % every == 0 or done == num_steps or preempted
      if at(config.train.log_every):
        scalars = hooks.check_finite(*pending)  # never log or save a non-finite state
        step_seconds = (time.time() - last_log[1]) / (done - last_log[0])
        last_log = (done, time.time())
        scalars.update(hooks.throughput_scalars(perf_stats, step_seconds, config))
        writer.write_scalars(done, scalars)
        jsonl.write(done, scalars)
      if at(config.train.checkpoint_every):
        hooks.check_finite(*pending)
        mngr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                data=grain.checkpoint.CheckpointSave(train_iter)))
      if preempted:
        bar.write(f"preemption signal: saved step {done}; exiting cleanly (rerun the same command to resume)")
        break
      if config.train.eval_every > 0 and at(config.train.eval_every):
        params = state.get("ema", state["params"])
        eval_metrics = evaluators.evaluate_all(lambda b: predict_fn(params, rest, b), config, tokenizer, s.mesh,
                                               workdir=workdir if done == num_steps else None)
        flat = eval_common.flatten(eval_metrics)
        writer.write_scalars(done, {f"eval/{k}": v for k, v in flat.items()})
        jsonl.write(done, {f"eval/{k}": v for k, v in flat.items()})
        bar.write(f"step {done}: " + ", ".join(f"{k}={flat[k]:.3f}" for k in HEADLINE if k in flat))
        if best is not None:
          checkpoints.check_best_metric(config, flat)
          best.save(done, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), metrics=flat)
    if pending is not None:
      hooks.check_finite(*pending)
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
